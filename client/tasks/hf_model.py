"""A model directory, as ``save_pretrained`` wrote it, loaded from local files only and
checked: it exists, holds a causal language model, and its tokenizer's vocabulary fits
the model's embedding. Every failure is a ``TaskError`` that names the directory."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from client.tasks.api import TaskError

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def check_model_dir(path: Path) -> None:
    """Checks that read no weights: a directory with a causal LM's config.json and a
    tokenizer whose vocabulary fits the model's."""
    if not path.is_dir():
        raise ValueError(f"model directory {path} does not exist")
    if not (path / "config.json").is_file():
        raise ValueError(f"{path} has no config.json: not a directory save_pretrained wrote")
    config = _causal_lm_config(path)
    tokenizer = load_tokenizer(path)
    rows = getattr(config, "vocab_size", None)
    if rows is not None:
        check_vocabulary(path, tokenizer, int(rows))


def load_tokenizer(path: Path) -> Any:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, TypeError) as exc:
        raise ValueError(f"{path}: its tokenizer does not load ({exc})") from None
    if tokenizer.eos_token_id is None:
        raise ValueError(f"{path}: the tokenizer has no eos token (documents are separated "
                         "by it)")
    return tokenizer


def check_vocabulary(path: Path, tokenizer: Any, rows: int) -> None:
    if len(tokenizer) > rows:
        raise ValueError(f"{path}: the tokenizer's vocabulary ({len(tokenizer)} tokens) does "
                         f"not match the model's ({rows} embedding rows): a tokenizer of "
                         "another model?")


def _causal_lm_config(path: Path) -> Any:
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"{path}/config.json does not load: {exc}") from None
    if type(config) in MODEL_FOR_CAUSAL_LM_MAPPING:
        return config
    raise ValueError(f"{path} is not a causal language model: its config is "
                     f"{type(config).__name__} (model_type {config.model_type!r}), which "
                     "AutoModelForCausalLM does not load")


def load_model(path: Path) -> tuple[nn.Module, Any]:
    """(model in float32 on the CPU, in eval mode; its tokenizer)."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        check_model_dir(path)
        tokenizer = load_tokenizer(path)
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True,
                                                     dtype=torch.float32)
        check_vocabulary(path, tokenizer, model.get_input_embeddings().weight.shape[0])
    except (OSError, ValueError) as exc:
        raise TaskError(str(exc)) from None
    return model.eval(), tokenizer
