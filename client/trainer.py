"""Local training of a client's offset theta_i.

The client's model is x = theta + theta_i. It minimises
    L_i(x) + (c/2) ||x - theta||^2
by minibatch SGD, with c = lam in ``personal`` mode (the inner problem of docs/design.md) and
c = prox-mu in ``global`` mode (FedProx; 0 is plain local SGD). It returns theta_i = x - theta.
"""

from __future__ import annotations

import time
from collections.abc import Sized
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from client.tasks.api import Arrays, NoSettings, Task
from client.tasks.runtime import load_params

ARRAYS_TASK = Task(NoSettings(), ref="arrays")  # the default supervised loop, cross-entropy

Params = dict[str, Tensor]


@dataclass(frozen=True)
class TrainResult:
    offset: Params  # theta_i, on the CPU, in the parameters' dtype
    loss: float  # mean training loss over the last epoch
    seconds: float
    steps: int


def pick_device(requested: str) -> torch.device:
    """``auto`` takes the GPU when the worker has one."""
    if requested == "cpu":
        return torch.device("cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but torch sees no CUDA device")
    if requested in ("cuda", "auto") and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def train_offset(
    model: nn.Module,
    theta: Params,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    proximal: float,
    device: torch.device,
    seed: int,
    warm_offset: Params | None = None,
    trainable: list[str] | None = None,
) -> TrainResult:
    """``fit_offset`` of a supervised classifier on arrays (x, y); ``trainable`` None is
    every tensor of theta."""
    return fit_offset(
        ARRAYS_TASK, model, theta, Arrays(x, y), epochs=epochs, lr=lr, batch_size=batch_size,
        proximal=proximal, device=device, seed=seed, warm_offset=warm_offset,
        trainable=trainable,
    )


def fit_offset(
    task: Task,
    model: nn.Module,
    theta: Params,
    split: Sized,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    proximal: float,
    device: torch.device,
    seed: int,
    warm_offset: Params | None = None,
    trainable: list[str] | None = None,
) -> TrainResult:
    """Train ``model`` from theta (+ ``warm_offset``) on the task's batches of ``split``;
    only the ``trainable`` tensors move (every tensor of theta when None) and only they
    are in the returned offset. A trainable tensor that is not in theta (a low-rank
    factor, ``Task.low_rank_update``) is returned as its trained value."""
    t0 = time.perf_counter()
    model = task.place(model, device)
    model.train()
    anchor = {k: t.to(device) for k, t in theta.items()}
    warm = {k: t.to(device) for k, t in (warm_offset or {}).items()}
    load_params(model, anchor, warm)
    wanted = set(trainable if trainable is not None else theta)
    named = [(n, p) for n, p in model.named_parameters() if n in wanted]
    for n, p in named:  # a trained tensor outside theta (a low-rank factor): sent as itself
        anchor.setdefault(n, torch.zeros_like(p))
    for _, p in model.named_parameters():
        p.requires_grad_(False)
    for _, p in named:
        p.requires_grad_(True)
    params = [p for _, p in named]
    anchors = [anchor[n] for n, _ in named]
    opt = task.optimizer(params, lr)
    prepared = task.prepare(split, device)
    gen = torch.Generator().manual_seed(seed)
    steps = 0
    epoch_loss = 0.0
    for _ in range(epochs):
        total = torch.zeros((), device=device)
        seen = 0
        for batch in task.batches(prepared, batch_size, gen):
            opt.zero_grad(set_to_none=False)
            loss, examples = task.train_step(model, batch)
            if proximal > 0:
                # grad of (c/2)||x - theta||^2 is c (x - theta), added in place
                with torch.no_grad():
                    diff = torch._foreach_sub(params, anchors)
                    torch._foreach_add_([p.grad for p in params], diff, alpha=proximal)
            opt.step()
            total += loss * examples
            seen += examples
            steps += 1
        epoch_loss = float(total) / max(seen, 1)  # one sync per epoch
    with torch.no_grad():
        offset = {n: (p.detach() - anchor[n]).cpu() for n, p in named}
    return TrainResult(offset, epoch_loss, time.perf_counter() - t0, steps)


@torch.no_grad()
def evaluate(
    model: nn.Module, x: np.ndarray, y: np.ndarray, device: torch.device
) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of ``model`` on (x, y)."""
    model.to(device).eval()
    xt, yt = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
    logits = model(xt)
    loss = nn.functional.cross_entropy(logits, yt).item()
    acc = (logits.argmax(1) == yt).float().mean().item()
    return loss, acc


def diagonal_fisher(
    model: nn.Module, x: np.ndarray, y: np.ndarray, device: torch.device, *,
    names: list[str] | None = None, max_examples: int = 256, seed: int = 0,
    task: Task = ARRAYS_TASK,
) -> Params:
    """The empirical diagonal Fisher of ``model`` at its current parameters: the mean over
    examples of the squared per-example gradient of the log-likelihood (Matena and Raffel
    2022 use it to weight each client's parameters per coordinate). Per-example gradients
    come from torch.func (vmap over grad), on at most ``max_examples`` examples; the
    log-likelihood is the task's loss of a one-example batch (x, y)."""
    from torch.func import functional_call, grad, vmap

    model.to(device).eval()
    params = {n: p.detach() for n, p in model.named_parameters() if names is None or n in names}
    frozen = {n: p.detach() for n, p in model.named_parameters() if n not in params}
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(x))[:max_examples]
    xt, yt = torch.from_numpy(x[idx]).to(device), torch.from_numpy(y[idx]).to(device)

    def nll(p: Params, xi: Tensor, yi: Tensor) -> Tensor:
        def forward(inputs: Tensor) -> Tensor:
            return functional_call(model, {**p, **frozen}, (inputs,))  # (1, C)

        return task.loss(forward, (xi.unsqueeze(0), yi.unsqueeze(0)))

    per_example = vmap(grad(nll), in_dims=(None, 0, 0))(params, xt, yt)  # name -> (B, *shape)
    return {n: g.square().mean(0).cpu() for n, g in per_example.items()}
