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
    """Cheap checks (no weights read): a directory with a causal LM's config.json."""
    if not path.is_dir():
        raise ValueError(f"model directory {path} does not exist")
    if not (path / "config.json").is_file():
        raise ValueError(f"{path} has no config.json: not a directory save_pretrained wrote")
    _causal_lm_class(path)


def _causal_lm_class(path: Path) -> type:
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"{path}/config.json does not load: {exc}") from None
    try:
        return MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    except KeyError:
        raise ValueError(f"{path} is not a causal language model: its config is "
                         f"{type(config).__name__} (model_type {config.model_type!r}), which "
                         "AutoModelForCausalLM does not load") from None


def load_model(path: Path) -> tuple[nn.Module, Any]:
    """(model in float32 on the CPU, in eval mode; its tokenizer)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        check_model_dir(path)
    except ValueError as exc:
        raise TaskError(str(exc)) from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise TaskError(f"{path}: its tokenizer does not load ({exc})") from None
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True,
                                                 dtype=torch.float32)
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        raise TaskError(f"{path}: the tokenizer's vocabulary ({len(tokenizer)} tokens) does not "
                        f"match the model's embedding ({rows} rows): a tokenizer of another "
                        "model?")
    if tokenizer.eos_token_id is None:
        raise TaskError(f"{path}: the tokenizer has no eos token (documents are separated "
                        "by it)")
    return model.eval(), tokenizer
