"""A tiny causal language model made here, for the ``causal-lm`` task's defaults, the
demo and the tests: a Llama-style config small enough for two CPU cores, a byte-level BPE
tokenizer trained with ``tokenizers``, both briefly pretrained on text fedmerge ships
(client/tasks/data/othello.md: the first scenes of Othello; .md because a Flower FAB
carries only .py/.toml/.md/.yaml/.json files, and a deployment worker runs the FAB's copy
of this module). Nothing is downloaded.

``tiny_model_dir(spec)`` builds it once and caches it under ``$FEDMERGE_CACHE/models``
(default ~/.cache/fedmerge/models), in a folder keyed by a hash of the spec and the text;
what is there is what ``save_pretrained`` wrote, so ``AutoModelForCausalLM`` and
``AutoTokenizer`` load it like any other model directory. transformers and tokenizers
are imported here only, when a model is built.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from client.shakespeare import cache_dir, locked_folder
from client.threads import torch_threads

PRETRAIN_TEXT = Path(__file__).with_name("data") / "othello.md"
EOS = "<|endoftext|>"


@dataclass(frozen=True)
class TinyLMSpec:
    vocab_size: int = 384  # BPE merges on top of the 256 bytes
    hidden: int = 64
    layers: int = 2
    heads: int = 4
    intermediate: int = 128
    context: int = 128
    pretrain_steps: int = 150
    pretrain_batch: int = 8
    pretrain_window: int = 64  # tokens per pretraining window (<= context)
    pretrain_lr: float = 3e-3
    seed: int = 0

    def key(self, text: str) -> str:
        blob = json.dumps({"spec": asdict(self), "text": hashlib.sha256(text.encode()).hexdigest(),
                           "version": 1}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def tiny_model_dir(spec: TinyLMSpec | None = None, root: Path | None = None,
                   text: str | None = None) -> Path:
    """The directory of the tiny model for ``spec`` (built on first use, once per host:
    concurrent builders wait on a lock and find it done)."""
    spec = spec or TinyLMSpec()
    text = PRETRAIN_TEXT.read_text() if text is None else text
    root = (root or cache_dir() / "models").expanduser()
    target = root / f"tiny-llama-{spec.key(text)}"
    if (target / "config.json").exists():
        return target
    with locked_folder(root, "build"):
        if not (target / "config.json").exists():
            tmp = root / f".{target.name}.{os.getpid()}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            build_tiny_model(spec, text, tmp)
            os.replace(tmp, target)  # atomic: a reader sees all of it or nothing
    return target


def build_tiny_model(spec: TinyLMSpec, text: str, dest: Path) -> Path:
    """Train the tokenizer, initialise the model, pretrain it briefly, save both."""
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    tokenizer = train_tokenizer(text, spec.vocab_size)
    eos = tokenizer.convert_tokens_to_ids(EOS)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=spec.hidden, intermediate_size=spec.intermediate,
        num_hidden_layers=spec.layers, num_attention_heads=spec.heads,
        num_key_value_heads=spec.heads, max_position_embeddings=spec.context,
        tie_word_embeddings=True, bos_token_id=eos, eos_token_id=eos, pad_token_id=eos,
    )
    # one thread: its matrices are too small for threads to pay
    with torch_threads(1), torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = LlamaForCausalLM(config)
        ids = torch.tensor(tokenizer(text)["input_ids"], dtype=torch.long)
        _pretrain(model, ids, spec)
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    (dest / "fedmerge-tiny-lm.json").write_text(json.dumps(asdict(spec), indent=1))
    return dest


def train_tokenizer(text: str, vocab_size: int):
    """A byte-level BPE tokenizer (any text encodes) trained on ``text``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(text.splitlines(), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS,
                                   pad_token=EOS, model_max_length=1 << 20)


def _pretrain(model: torch.nn.Module, ids: torch.Tensor, spec: TinyLMSpec) -> None:
    span = min(spec.pretrain_window, spec.context)
    if len(ids) <= span + 1:
        raise ValueError(f"pretraining text has {len(ids)} tokens, fewer than one window "
                         f"of {span + 1}")
    opt = torch.optim.AdamW(model.parameters(), lr=spec.pretrain_lr)
    model.train()
    for _ in range(spec.pretrain_steps):
        starts = torch.randint(0, len(ids) - span, (spec.pretrain_batch,))
        batch = torch.stack([ids[s : s + span] for s in starts.tolist()])
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


if __name__ == "__main__":  # python -m client.tasks.tiny_lm: build (once) and say where
    print(tiny_model_dir())
