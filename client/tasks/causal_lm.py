"""The built-in ``causal-lm`` task: LoRA fine-tuning of a causal language model.

The model is whatever ``save_pretrained`` wrote in ``model-path`` (the tiny model of
client/tasks/tiny_lm.py when none is given), loaded with ``AutoModelForCausalLM`` from
local files only, with PEFT LoRA adapters on ``target-modules``. Two merges
(``lora-merge``, docs/lora.md):

- ``exact``: theta is the targeted modules' dense weights (weight space). A node loads
  them, trains fresh adapters on top and sends only the factors A_i, B_i; the
  coordinator turns each reply into its offset s B_i A_i (``low_rank_update``) and steps
  theta with the server optimizer on sum_i w_i s B_i A_i.
- ``naive``: theta is the adapter tensors themselves, averaged as plain tensors (FedAvg
  over the adapters, FlowerTune's method); the adapters are kept across rounds.

Data: Shakespeare roles as simulated partitions, text or JSONL files in a worker's
data-dir (client/tasks/text_data.py); metrics loss and perplexity per token.
transformers and peft are imported only when this task is used.
"""

from __future__ import annotations

import copy
import math
import os
import warnings
from collections.abc import Iterator, Sized
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import Tensor, nn

from client import shakespeare
from client.tasks.api import Batch, DataError, LowRank, PartitionRequest, Splits, Task, TaskError
from client.tasks.runtime import load_params
from client.tasks.text_data import TokenChunks, find_split, pack, read_documents, split_off

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is ever fetched at run time
LORA_FACTORS = ("lora_A", "lora_B")


class CausalLMSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    model_path: str = Field("", alias="model-path",
                            description="a save_pretrained directory; '' = the tiny model")
    lora_merge: Literal["exact", "naive"] = Field("exact", alias="lora-merge")
    rank: int = Field(8, ge=1)
    alpha: float = Field(16.0, gt=0.0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: tuple[str, ...] = Field(("q_proj", "v_proj"), alias="target-modules",
                                            min_length=1)
    max_seq_len: int = Field(64, ge=2, alias="max-seq-len")
    grad_accumulation: int = Field(1, ge=1, alias="grad-accumulation")
    template: str = "{prompt}\n{response}"  # JSONL prompt/response pairs
    max_train_chunks: int = Field(64, ge=1, alias="max-train-chunks")  # windows per node
    max_val_chunks: int = Field(16, ge=1, alias="max-val-chunks")
    central_chunks_per_role: int = Field(4, ge=1, alias="central-chunks-per-role")

    @field_validator("model_path")
    @classmethod
    def _model_dir(cls, value: str) -> str:
        if value:
            from client.tasks.hf_model import check_model_dir

            check_model_dir(Path(value).expanduser())
        return value


class CausalLMTask(Task):
    Settings = CausalLMSettings
    settings: CausalLMSettings
    headline = "perplexity"
    higher_is_better = False

    # --- the model ---------------------------------------------------------------------
    @cached_property
    def model_dir(self) -> Path:
        if self.settings.model_path:
            return Path(self.settings.model_path).expanduser().resolve()
        from client.tasks.tiny_lm import tiny_model_dir

        return tiny_model_dir()

    @cached_property
    def _base(self) -> tuple[nn.Module, Any]:
        from client.tasks.hf_model import load_model

        try:
            return load_model(self.model_dir)
        except TaskError as exc:
            raise TaskError(f"task {self.ref}: {exc}") from None

    @property
    def tokenizer(self) -> Any:
        return self._base[1]

    def build_model(self) -> nn.Module:
        """The base model (loaded once per process, copied) with fresh adapters: A drawn
        under the run's seed, B zero, so the model is the base model's function."""
        from peft import LoraConfig, get_peft_model

        s = self.settings
        config = LoraConfig(r=s.rank, lora_alpha=s.alpha, lora_dropout=s.dropout,
                            target_modules=list(s.target_modules), bias="none")
        try:
            with warnings.catch_warnings():  # peft calls an API transformers 5 deprecates
                warnings.filterwarnings("ignore", "`is_gradient_checkpointing`", FutureWarning)
                return get_peft_model(copy.deepcopy(self._base[0]), config)
        except ValueError as exc:  # a target module the model does not have
            raise TaskError(f"task {self.ref}: task-config.target-modules "
                            f"{list(s.target_modules)}: {exc}") from None

    def trainable(self, model: nn.Module) -> list[str]:
        """exact: the targeted modules' dense weights; naive: the adapters."""
        names = []
        for prefix, _ in _lora_layers(model):
            if self.settings.lora_merge == "exact":
                names.append(f"{prefix}.base_layer.weight")
            else:
                names += [f"{prefix}.{f}.default.weight" for f in LORA_FACTORS]
        return names

    def low_rank_update(self, model: nn.Module) -> dict[str, LowRank] | None:
        if self.settings.lora_merge != "exact":
            return None
        return {f"{prefix}.base_layer.weight": LowRank(
            f"{prefix}.lora_A.default.weight", f"{prefix}.lora_B.default.weight",
            float(layer.scaling["default"]), bool(getattr(layer, "fan_in_fan_out", False)))
            for prefix, layer in _lora_layers(model)}

    def place(self, model: nn.Module, device: torch.device) -> nn.Module:
        """bf16 for the frozen weights on a GPU that supports it; the adapters and every
        tensor on a CPU stay float32."""
        model = model.to(device)
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            for name, p in model.named_parameters():
                if not any(f in name for f in LORA_FACTORS):
                    p.data = p.data.to(torch.bfloat16)
        return model

    def optimizer(self, params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
        return torch.optim.AdamW(params, lr=lr, weight_decay=0.0)

    # --- data --------------------------------------------------------------------------
    def _pack(self, documents: list[str], cap: int) -> TokenChunks:
        tok = self.tokenizer
        return pack(documents, lambda t: tok(t, add_special_tokens=False)["input_ids"],
                    int(tok.eos_token_id), self.settings.max_seq_len, cap)

    def partition(self, request: PartitionRequest) -> Splits:
        roles = shakespeare.client_roles()
        if request.num_partitions > len(roles):
            raise TaskError(f"task {self.ref}: num-partitions={request.num_partitions} but "
                            f"only {len(roles)} Shakespeare roles")
        train, val, _ = _role_parts(roles[request.partition_id])
        return Splits(self._pack([train], self.settings.max_train_chunks),
                      self._pack([val], self.settings.max_val_chunks))

    def read_data_dir(self, directory: Path, seed: int) -> Splits:
        s = self.settings
        train_file, val_file = find_split(directory, "train"), find_split(directory, "val")
        if train_file is None:
            raise DataError(f"task {self.ref}: {directory} has neither train.txt nor "
                            "train.jsonl")
        train = self._pack(read_documents(train_file, s.template), s.max_train_chunks)
        if val_file is None:
            train, val = split_off(train)
        else:
            val = self._pack(read_documents(val_file, s.template), s.max_val_chunks)
        for split, path in ((train, train_file), (val, val_file or train_file)):
            if len(split) == 0:
                raise DataError(f"task {self.ref}: {path} holds less than one window of "
                                f"max-seq-len={s.max_seq_len} tokens")
        return Splits(train, val)

    def central_data(self) -> TokenChunks:
        """Every client role's held-out last part, a few windows each."""
        parts = [self._pack([_role_parts(r)[2]], self.settings.central_chunks_per_role).ids
                 for r in shakespeare.client_roles()]
        return TokenChunks(torch.cat(parts))

    def prepare(self, split: Sized, device: torch.device) -> Tensor:
        if not isinstance(split, TokenChunks):
            raise TaskError(f"task {self.ref}: a split must be TokenChunks, got "
                            f"{type(split).__name__}")
        return split.ids.to(device)

    def batches(self, prepared: Tensor, batch_size: int,
                generator: torch.Generator | None) -> Iterator[Batch]:
        n = len(prepared)
        order = torch.randperm(n, generator=generator) if generator is not None else None
        for i in range(0, n, batch_size):
            rows = order[i : i + batch_size] if order is not None else slice(i, i + batch_size)
            yield prepared[rows]

    # --- the step and the metrics ------------------------------------------------------
    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        return model(input_ids=batch, labels=batch).loss

    def train_step(self, model: nn.Module, batch: Batch) -> tuple[Tensor, int]:
        """The batch in ``grad-accumulation`` micro-batches: each one's loss, weighted by
        its share of the batch, is backpropagated before the next is run."""
        total = torch.zeros((), device=batch.device)
        for micro in torch.tensor_split(batch, min(self.settings.grad_accumulation, len(batch))):
            loss = self.loss(model, micro) * (len(micro) / len(batch))
            loss.backward()
            total += loss.detach()
        return total, len(batch)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: Sized, device: torch.device) -> dict[str, float]:
        """Mean cross-entropy per predicted token, and its exponential (perplexity)."""
        model.eval()
        total, tokens = 0.0, 0
        for batch in self.batches(self.prepare(split, device), 16, None):
            logits = model(input_ids=batch).logits[:, :-1].float()
            target = batch[:, 1:]
            total += float(nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="sum"))
            tokens += target.numel()
        if tokens == 0:
            raise TaskError(f"task {self.ref}: nothing to evaluate on (an empty split)")
        loss = total / tokens
        return {"loss": loss, "perplexity": math.exp(min(loss, 50.0))}

    # --- export ------------------------------------------------------------------------
    def export(self, theta: dict[str, Tensor], model: nn.Module, directory: Path) -> list[Path]:
        """Always a merged model directory (``merged/``: AutoModelForCausalLM loads it);
        for the naive merge also the PEFT adapter (``adapter/``: PeftModel loads it on
        the base model at model-path)."""
        load_params(model, theta)
        written = []
        if self.settings.lora_merge == "naive":
            model.peft_config["default"].base_model_name_or_path = str(self.model_dir)
            model.save_pretrained(directory / "adapter")
            written.append(directory / "adapter")
        merged = model.merge_and_unload()
        merged.save_pretrained(directory / "merged")
        self.tokenizer.save_pretrained(directory / "merged")
        written.append(directory / "merged")
        return written


def _lora_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(module name, module) of every LoRA-wrapped layer, in model order."""
    return [(name, m) for name, m in model.named_modules()
            if hasattr(m, "base_layer") and hasattr(m, "lora_A") and hasattr(m, "scaling")]


def _role_parts(role: str) -> tuple[str, str, str]:
    """A role's lines: the first 70% train, the next 10% validation, the rest held out
    (the same split as the shakespeare task's)."""
    lines = shakespeare.all_roles()[role]
    n = len(lines)
    a = int(n * shakespeare.TRAIN_FRACTION)
    b = int(n * (shakespeare.TRAIN_FRACTION + shakespeare.VAL_FRACTION))
    return " ".join(lines[:a]), " ".join(lines[a:b]), " ".join(lines[b:])
