"""What the coordinator asks a client to do in a round (sent in the round's ConfigRecord
under the same hyphenated keys as the run config, parsed here once), and the record keys
of a client's reply, which the coordinator reads (coordinator/replies.py)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

OFFSET_KEY = "arrays"  # ArrayRecord: theta_i per tensor (theta itself in a request)
FISHER_KEY = "fisher"  # optional ArrayRecord: diagonal Fisher per tensor
METRICS_KEY = "metrics"  # MetricRecord: num-examples, train-loss, ...
MANIFEST_KEY = "manifest"  # optional ConfigRecord: {"tensors": [...]} of a partial update
NUM_EXAMPLES = "num-examples"


@dataclass(frozen=True)
class ClientTask:
    mode: str = "global"  # global: offset from zero each round; personal: kept, lam term
    task: str = "digits"  # a built-in's name or "module:attr" (client/tasks/registry.py)
    task_config: str = ""  # the task's settings, canonical JSON ("" = its defaults)
    partition: str = "dirichlet"
    dirichlet_alpha: float = 0.5
    classes_per_client: int = 2
    seed: int = 0
    local_epochs: int = 2
    local_lr: float = 0.05
    batch_size: int = 32
    prox_mu: float = 0.0
    lam: float = 1.0
    device: str = "auto"
    combiner: str = "mean"  # "fisher": also send a diagonal Fisher per trained tensor
    # "folded": a train reply also carries the client's evaluation of the theta it got
    federated_evaluation: str = "folded"

    @classmethod
    def config_keys(cls) -> list[str]:
        """The run-config keys a client needs."""
        return [f.name.replace("_", "-") for f in fields(cls)]

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ClientTask:
        missing = [k for k in cls.config_keys() if k not in config]
        if missing:
            raise ValueError(f"round config lacks client task key(s) {missing}")
        return cls(**{f.name: config[f.name.replace("_", "-")] for f in fields(cls)})

    @property
    def proximal_coefficient(self) -> float:
        """The weight of (c/2)||x - theta||^2 in the local loss: lam is the inner problem's
        own term in personal mode; FedProx's mu in global mode."""
        return self.lam if self.mode == "personal" else self.prox_mu
