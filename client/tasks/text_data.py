"""Text for the ``causal-lm`` task: a worker's files read into documents, and documents
packed into fixed-length windows of token ids (``TokenChunks``, whose length is the
example count of a node's update).

A worker's ``data-dir`` holds ``train.txt`` or ``train.jsonl`` (and optionally
``val.txt`` / ``val.jsonl``; without one, the last tenth of the training windows is the
validation split). A JSONL line is ``{"text": ...}`` or ``{"prompt": ..., "response": ...}``,
the latter written out with the task's template. A bad line raises ``DataError`` naming
the file and the line.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from client.tasks.api import DataError

VAL_FRACTION = 0.1


@dataclass(frozen=True)
class TokenChunks:
    """(n, length) token ids: n windows of one length, the examples of a split."""

    ids: torch.Tensor

    def __len__(self) -> int:
        return int(self.ids.shape[0])


def read_documents(path: Path, template: str) -> list[str]:
    """The documents of one file: a .txt file is one document; a .jsonl file one per line."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read it as UTF-8 text ({exc})") from None
    if path.suffix == ".txt":
        return [text]
    docs = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{number}: not a JSON object ({exc.msg})") from None
        docs.append(_document(row, template, f"{path}:{number}"))
    return docs


def _document(row: object, template: str, where: str) -> str:
    if not isinstance(row, dict):
        raise DataError(f"{where}: a line must be a JSON object, got {type(row).__name__}")
    if isinstance(row.get("text"), str):
        return row["text"]
    if isinstance(row.get("prompt"), str) and isinstance(row.get("response"), str):
        try:
            return template.format(prompt=row["prompt"], response=row["response"])
        except (KeyError, IndexError, ValueError) as exc:
            raise DataError(f"{where}: the template {template!r} does not format ({exc}); "
                            "it may name {prompt} and {response}") from None
    raise DataError(f"{where}: needs a string field 'text', or 'prompt' and 'response' "
                    f"(it has {sorted(row)})")


def find_split(directory: Path, split: str) -> Path | None:
    found = [directory / f"{split}{ext}" for ext in (".txt", ".jsonl")
             if (directory / f"{split}{ext}").is_file()]
    if len(found) > 1:
        raise DataError(f"{directory}: both {found[0].name} and {found[1].name}; keep one")
    return found[0] if found else None


def pack(
    documents: Sequence[str], encode: Callable[[str], list[int]], eos: int, length: int,
    cap: int | None = None,
) -> TokenChunks:
    """The documents' tokens, each followed by ``eos``, cut into windows of ``length``
    (the tail that does not fill one is dropped); at most ``cap`` evenly spaced windows."""
    ids: list[int] = []
    for doc in documents:
        ids.extend(encode(doc))
        ids.append(eos)
    n = len(ids) // length
    chunks = torch.tensor(ids[: n * length], dtype=torch.long).reshape(n, length)
    if cap is not None and n > cap:
        chunks = chunks[torch.linspace(0, n - 1, cap).long()]
    return TokenChunks(chunks)


def split_off(chunks: TokenChunks, fraction: float = VAL_FRACTION) -> tuple[TokenChunks,
                                                                           TokenChunks]:
    """(train, val): the last ``fraction`` of the windows (at least one) is validation."""
    n = len(chunks)
    if n < 2:
        raise DataError(f"{n} window(s) of text: too little to split off a validation part")
    k = max(1, int(n * fraction))
    return TokenChunks(chunks.ids[: n - k]), TokenChunks(chunks.ids[n - k :])
