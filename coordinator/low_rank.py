"""Replies whose offset travels in low-rank form (a task's ``low_rank_update``: LoRA's
factors A_i, B_i of each targeted weight of theta): what a reply must hold, and its
offset in weight space, s B_i A_i per targeted weight, computed one reply at a time so
that the streaming combiner and the server optimizer work on theta unchanged (memory
O(targeted weights), never one dense offset per client)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from aggregation import Params
from aggregation.lora import Factors, dense_offset
from client.tasks.api import LowRank, Task
from client.tasks.registry import load_task
from client.tasks.runtime import build_model


class LowRankError(ValueError):
    """A reply's factors do not make an offset; the message is the reason recorded."""


@dataclass(frozen=True)
class LowRankReplies:
    layout: Mapping[str, LowRank]  # theta tensor -> its factors' names and scale
    template: Params  # the factors' shapes and dtypes (meta tensors): what a reply holds

    def factors(self, sent: Params) -> dict[str, Factors]:
        """The factors a reply sent, per targeted weight of theta (views, no copy)."""
        out: dict[str, Factors] = {}
        for name, f in self.layout.items():
            a, b = sent.get(f.a), sent.get(f.b)
            if a is None and b is None:
                continue  # a partial update that leaves this weight out
            if a is None or b is None:
                raise LowRankError(f"{f.a if a is None else f.b} missing: a factor without "
                                   "its partner makes no offset")
            out[name] = Factors(a, b, f.scale, f.transposed)
        return out

    def offset(self, sent: Params) -> Params:
        """The weight-space offset of the factors a reply sent, per targeted weight."""
        return {name: dense_offset(f) for name, f in self.factors(sent).items()}


def low_rank_replies(task_name: str, task_config: str, seed: int) -> LowRankReplies | None:
    """The run's low-rank reply form, or None when its task sends offsets as they are."""
    task = load_task(task_name, task_config)
    if type(task).low_rank_update is Task.low_rank_update:
        return None  # no model is built for a task that cannot have one
    model = build_model(task, seed)
    layout = task.low_rank_update(model)
    if layout is None:
        return None
    params = dict(model.named_parameters())
    template = {n: torch.empty(params[n].shape, dtype=params[n].dtype, device="meta")
                for f in layout.values() for n in (f.a, f.b)}
    return LowRankReplies(dict(layout), template)
