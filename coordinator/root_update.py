"""FLTrust's server update: the coordinator trains its own offset each round on a small
root data set drawn from the task's held-out split, with the clients' local settings
(epochs, learning rate, batch size). A run whose task has no held-out split cannot use
``combiner = "fltrust"`` (``coordinator/config.py`` says so at start)."""

from __future__ import annotations

from collections.abc import Callable, Sized

import numpy as np
import torch

from aggregation import Params
from client.tasks.api import Arrays
from client.tasks.registry import load_task
from client.tasks.runtime import build_model
from client.trainer import fit_offset
from coordinator.config import ConfigError, MergeConfig


def root_split(cfg: MergeConfig) -> Sized:
    """``fltrust-root-size`` examples of the task's held-out split, drawn under the run's
    seed (the whole split when it is smaller, or not ``Arrays``)."""
    split = load_task(cfg.task, cfg.task_config).central_data()
    if split is None:
        raise ConfigError(f"combiner: fltrust needs held-out data; task {cfg.task!r} has none")
    if not isinstance(split, Arrays) or len(split) <= cfg.fltrust_root_size:
        return split
    rows = np.random.default_rng(cfg.seed).choice(len(split), cfg.fltrust_root_size,
                                                  replace=False)
    return Arrays(split.x[rows], split.y[rows])


def server_update(cfg: MergeConfig) -> Callable[[Params], Params]:
    """theta -> the coordinator's offset, trained on ``root_split`` (on the CPU; a new
    local-SGD seed each call)."""
    task = load_task(cfg.task, cfg.task_config)
    root = root_split(cfg)
    model = build_model(task, cfg.seed)
    calls = 0

    def update(theta: Params) -> Params:
        nonlocal calls
        calls += 1
        seed = int(np.random.SeedSequence([cfg.seed, 2**31 - 1, calls]).generate_state(1)[0])
        with torch.enable_grad():
            result = fit_offset(task, model, theta, root, epochs=cfg.local_epochs,
                                lr=cfg.local_lr, batch_size=cfg.batch_size, proximal=0.0,
                                device=torch.device("cpu"), seed=seed)
        return result.offset

    return update
