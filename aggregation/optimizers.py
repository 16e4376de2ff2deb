"""Server optimizers on the objective's gradient (Reddi et al. 2021, Algorithm 2).

A ``ServerOptimizer`` is a pair of functions, as in fedjax: ``init(params)`` makes the
state, ``step(params, grads, state)`` updates ``params`` in place and returns the new
state. ``grads`` is the round's scratch buffer: a step may overwrite it. Arithmetic runs
in place, in the parameters' dtype: sgd and momentum as ``_foreach_`` kernels over the
whole tensor list, the adaptive step block by block (``BLOCK_ELEMENTS``), Adam as torch's
fused kernel where it can.
``grads`` may hold only some tensors (partial sub-models): the others, and their
optimizer slots, do not move.

Adagrad, Adam and Yogi share one adaptive step and differ only in the second-moment
update, with Delta = -g:
    m <- b1 m + (1 - b1) Delta
    v <- v + Delta^2                                  (Adagrad)
    v <- b2 v + (1 - b2) Delta^2                      (Adam)
    v <- v - (1 - b2) Delta^2 sign(v - Delta^2)       (Yogi)
    theta <- theta + lr m_hat / (sqrt(v_hat) + tau)
(the code keeps m for g = -Delta and subtracts, which is the same step.)
m_hat, v_hat are bias-corrected with the optimizer's own step count t (1, 2, ...) when
``bias_correction`` is on (Adam and Yogi by default), else m and v themselves.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from functools import partial

import torch
from torch import Tensor

from aggregation.types import OptimizerState, Params


@dataclass(frozen=True)
class ServerOptimizer:
    name: str
    init: Callable[[Params], OptimizerState]
    step: Callable[[Params, Params, OptimizerState], OptimizerState]


def _zeros_like(params: Params) -> Params:
    return {k: torch.zeros_like(t) for k, t in params.items()}


def _selected(params: Params, grads: Params, slot: Params | None = None) -> list[Tensor]:
    source = params if slot is None else slot
    return [source[k] for k in grads]


def sgd(*, lr: float = 1.0) -> ServerOptimizer:
    """theta <- theta - lr g. With lr = 1 on the pseudo-gradient this is FedAvg."""

    def init(params: Params) -> OptimizerState:
        return OptimizerState()

    @torch.no_grad()
    def step(params: Params, grads: Params, state: OptimizerState) -> OptimizerState:
        if grads:
            torch._foreach_add_(_selected(params, grads), list(grads.values()), alpha=-lr)
        return replace(state, step=state.step + 1)

    return ServerOptimizer("sgd", init, step)


def momentum(*, lr: float = 1.0, beta: float = 0.9, nesterov: bool = False) -> ServerOptimizer:
    """Heavy-ball momentum on the server (FedAvgM, Hsu et al. 2019):
    u <- beta u + g; theta <- theta - lr u (Nesterov: theta <- theta - lr (g + beta u))."""

    def init(params: Params) -> OptimizerState:
        return OptimizerState(slots={"u": _zeros_like(params)})

    @torch.no_grad()
    def step(params: Params, grads: Params, state: OptimizerState) -> OptimizerState:
        if grads:
            u = _selected(params, grads, state.slots["u"])
            g = list(grads.values())
            torch._foreach_mul_(u, beta)
            torch._foreach_add_(u, g)
            if nesterov:
                torch._foreach_add_(g, u, alpha=beta)  # g is the round's scratch buffer
                torch._foreach_add_(_selected(params, grads), g, alpha=-lr)
            else:
                torch._foreach_add_(_selected(params, grads), u, alpha=-lr)
        return replace(state, step=state.step + 1)

    return ServerOptimizer("momentum", init, step)


SecondMoment = Callable[[Tensor, Tensor, Tensor], None]
"""``second_moment(v, g2, scratch)`` updates v in place from the squared gradient g2 (one
tensor or a block of one); it may overwrite ``scratch``, a buffer of the same shape."""

BLOCK_ELEMENTS = 1 << 18
"""On the CPU the adaptive step runs all its passes over a block of about this many
elements of p, g, m, v before moving on, while the block is still in cache (bench/README:
twice as fast as one pass per op over whole 10M-element tensors)."""


def _blocks(
    tensors: tuple[Tensor, ...],
    buffers: dict[tuple[torch.dtype, torch.device], Tensor],
) -> Iterator[tuple[Tensor, ...]]:
    """Pieces of same-shaped ``tensors`` and a scratch piece of that shape: on the CPU flat
    blocks of BLOCK_ELEMENTS (views: in-place ops reach the tensors); elsewhere the whole
    tensors, since a GPU runs each op over a whole tensor at once. Scratch comes from
    ``buffers``, one per dtype and device, grown when needed and reused across tensors."""
    g = tensors[0]
    n = g.numel()
    if n == 0:
        return
    blocked = g.device.type == "cpu" and all(x.is_contiguous() for x in tensors)
    size = min(BLOCK_ELEMENTS, n) if blocked else n
    kind = (g.dtype, g.device)
    if kind not in buffers or buffers[kind].numel() < size:
        buffers[kind] = g.new_empty(size)
    if not blocked:
        yield (*tensors, buffers[kind][:n].view_as(g))
        return
    flat = [x.view(-1) for x in tensors]
    for start in range(0, n, size):
        piece = [x[start : start + size] for x in flat]
        yield (*piece, buffers[kind][: piece[0].numel()])


def _adaptive(
    name: str,
    second_moment: SecondMoment,
    *,
    lr: float,
    beta1: float,
    tau: float,
    bias_correction: bool,
    beta2_for_correction: float,
) -> ServerOptimizer:
    if tau <= 0:
        raise ValueError(f"{name}: tau must be > 0, got {tau}")

    def init(params: Params) -> OptimizerState:
        return OptimizerState(slots={"m": _zeros_like(params), "v": _zeros_like(params)})

    @torch.no_grad()
    def step(params: Params, grads: Params, state: OptimizerState) -> OptimizerState:
        t = state.step + 1
        c1 = 1.0 - beta1**t if bias_correction else 1.0
        c2 = 1.0 - beta2_for_correction**t if bias_correction else 1.0
        # lr m_hat / (sqrt(v_hat) + tau) == (lr sqrt(c2) / c1) m / (sqrt(v) + tau sqrt(c2))
        eps, scale = tau * math.sqrt(c2), lr * math.sqrt(c2) / c1
        buffers: dict[tuple[torch.dtype, torch.device], Tensor] = {}
        for key, g in grads.items():  # g: the round's scratch buffer, overwritten
            quad = (params[key], g, state.slots["m"][key], state.slots["v"][key])
            for p, gb, m, v, s in _blocks(quad, buffers):
                m.lerp_(gb, 1.0 - beta1)  # m <- b1 m + (1 - b1) g  (sign: Delta = -g)
                gb.mul_(gb)  # g <- g^2 = Delta^2
                second_moment(v, gb, s)
                torch.sqrt(v, out=s)
                s.add_(eps)
                # theta <- theta + lr m_hat / (...) with m tracking g = -Delta: subtract.
                p.addcdiv_(m, s, value=-scale)
        return replace(state, step=t)

    return ServerOptimizer(name, init, step)


def adagrad(*, lr: float = 0.1, beta1: float = 0.0, tau: float = 1e-3) -> ServerOptimizer:
    """FedAdagrad: v <- v + Delta^2."""

    def second_moment(v: Tensor, g2: Tensor, scratch: Tensor) -> None:
        v.add_(g2)

    return _adaptive(
        "adagrad", second_moment, lr=lr, beta1=beta1, tau=tau,
        bias_correction=False, beta2_for_correction=0.0,
    )


def adam(
    *, lr: float = 0.1, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3,
    bias_correction: bool = True, fused: bool = True,
) -> ServerOptimizer:
    """FedAdam: v <- b2 v + (1 - b2) Delta^2. With bias correction this is torch's Adam
    with eps = tau, so it runs as torch's fused kernel (one pass over params, grads, m
    and v) where the tensors allow it, else as the blocked adaptive step (the portable
    step; ``fused=False``: always that one)."""

    def second_moment(v: Tensor, g2: Tensor, scratch: Tensor) -> None:
        v.lerp_(g2, 1.0 - beta2)

    portable = _adaptive(
        "adam", second_moment, lr=lr, beta1=beta1, tau=tau,
        bias_correction=bias_correction, beta2_for_correction=beta2,
    )
    if not fused or not bias_correction or not hasattr(torch, "_fused_adam_"):
        return portable
    return _on_fused_adam(portable, lr=lr, beta1=beta1, beta2=beta2, tau=tau)


def _on_fused_adam(
    portable: ServerOptimizer, *, lr: float, beta1: float, beta2: float, tau: float,
    rewrite_v: Callable[[Tensor, Tensor, Tensor], None] | None = None,
) -> ServerOptimizer:
    """``portable``'s step run by torch's fused Adam kernel (one pass over params, grads,
    m and v) where the tensors allow it. With ``rewrite_v(g, v, scratch)`` the kernel runs
    block by block, each block's v rewritten just before, while the block is in cache."""
    kernel = partial(torch._fused_adam_, lr=lr, beta1=beta1, beta2=beta2, weight_decay=0.0,
                     eps=tau, amsgrad=False, maximize=False, grad_scale=None, found_inf=None)

    @torch.no_grad()
    def step(params: Params, grads: Params, state: OptimizerState) -> OptimizerState:
        if not _fusable(params, grads):
            return portable.step(params, grads, state)
        t = state.step + 1
        if not grads:
            return replace(state, step=t)
        m, v = state.slots["m"], state.slots["v"]
        steps = torch.tensor(float(t), device=next(iter(grads.values())).device)  # read only
        if rewrite_v is None:
            group = [params[k] for k in grads]
            kernel(group, list(grads.values()), [m[k] for k in grads], [v[k] for k in grads],
                   [], [steps] * len(group))
            return replace(state, step=t)
        buffers: dict[tuple[torch.dtype, torch.device], Tensor] = {}
        for key, g in grads.items():
            for gb, pb, mb, vb, s in _blocks((g, params[key], m[key], v[key]), buffers):
                rewrite_v(gb, vb, s)
                kernel([pb], [gb], [mb], [vb], [], [steps])
        return replace(state, step=t)

    return ServerOptimizer(portable.name, portable.init, step)


def _fusable(params: Params, grads: Params) -> bool:
    """torch's fused Adam takes float tensors of one device, CPU or CUDA."""
    devices = {params[k].device for k in grads}
    return len(devices) <= 1 and all(
        params[k].dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16)
        and params[k].device.type in ("cpu", "cuda") for k in grads
    )


def yogi(
    *, lr: float = 0.1, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3,
    bias_correction: bool = True, fused: bool = True,
) -> ServerOptimizer:
    """FedYogi: v <- v - (1 - b2) Delta^2 sign(v - Delta^2). With bias correction it runs
    on torch's fused Adam kernel: given v' = (v - (1 - b2)(1 + sign(v - Delta^2)) Delta^2)
    / b2 in place of v, Adam's b2 v' + (1 - b2) Delta^2 is Yogi's v, and the rest of the
    two steps is the same. It runs block by block: v rewritten, then the kernel, while
    the block is in cache. ``fused=False``: always the portable step."""

    def second_moment(v: Tensor, g2: Tensor, scratch: Tensor) -> None:
        torch.sub(v, g2, out=scratch).sign_()  # sign(v - Delta^2)
        v.addcmul_(g2, scratch, value=-(1.0 - beta2))

    portable = _adaptive(
        "yogi", second_moment, lr=lr, beta1=beta1, tau=tau,
        bias_correction=bias_correction, beta2_for_correction=beta2,
    )
    if not fused or not bias_correction or beta2 <= 0.0 or not hasattr(torch, "_fused_adam_"):
        return portable

    def rewrite_v(g: Tensor, v: Tensor, scratch: Tensor) -> None:
        # five passes over the block: sign(v - Delta^2), (1 + sign) Delta, v', v' / b2
        torch.addcmul(v, g, g, value=-1.0, out=scratch).sign_()
        torch.addcmul(g, scratch, g, out=scratch)  # Delta + sign Delta, exact
        v.addcmul_(scratch, g, value=-(1.0 - beta2)).div_(beta2)

    return _on_fused_adam(portable, lr=lr, beta1=beta1, beta2=beta2, tau=tau,
                          rewrite_v=rewrite_v)


def make_optimizer(
    name: str, *, lr: float, momentum_beta: float = 0.9, beta1: float = 0.9,
    beta2: float = 0.99, tau: float = 1e-3,
) -> ServerOptimizer:
    """The optimizer a run's config names."""
    if name == "sgd":
        return sgd(lr=lr)
    if name == "momentum":
        return momentum(lr=lr, beta=momentum_beta)
    if name == "adagrad":
        return adagrad(lr=lr, tau=tau)
    if name == "adam":
        return adam(lr=lr, beta1=beta1, beta2=beta2, tau=tau)
    if name == "yogi":
        return yogi(lr=lr, beta1=beta1, beta2=beta2, tau=tau)
    raise ValueError(f"unknown optimizer {name!r}")
