"""aggregation/optimizers.py against a float64 reference written here from the module's
docstring (Reddi et al. 2021, Algorithm 2, with Delta = -g):

    m <- b1 m + (1 - b1) Delta
    v <- v + Delta^2                                  (Adagrad)
    v <- b2 v + (1 - b2) Delta^2                      (Adam)
    v <- v - (1 - b2) Delta^2 sign(v - Delta^2)       (Yogi)
    theta <- theta + lr m_hat / (sqrt(v_hat) + tau)

m_hat = m / (1 - b1^t), v_hat = v / (1 - b2^t) with the optimizer's own step count
t = 1, 2, ... when bias correction is on, else m and v.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import Tensor

from aggregation import (
    OptimizerState,
    Params,
    ServerOptimizer,
    adagrad,
    adam,
    make_optimizer,
    momentum,
    optimizers,
    sgd,
    yogi,
)

SHAPES = {"w": (3, 4), "b": (4,), "s": ()}


class Reference:
    """One server optimizer, float64, one tensor at a time, no in-place tricks."""

    def __init__(self, kind: str, params: Params, **hp: float | bool) -> None:
        self.kind = kind
        self.hp = hp
        self.t = 0
        self.params = {k: v.double().clone() for k, v in params.items()}
        self.m = {k: torch.zeros_like(v) for k, v in self.params.items()}  # Delta's, or u
        self.v = {k: torch.zeros_like(v) for k, v in self.params.items()}

    def step(self, grads: Params) -> None:
        self.t += 1
        for k, g in grads.items():
            g = g.double()
            if self.kind == "sgd":
                self.params[k] = self.params[k] - self.hp["lr"] * g
            elif self.kind == "momentum":
                beta, lr = self.hp["beta"], self.hp["lr"]
                self.m[k] = beta * self.m[k] + g
                direction = g + beta * self.m[k] if self.hp["nesterov"] else self.m[k]
                self.params[k] = self.params[k] - lr * direction
            else:
                self._adaptive(k, g)

    def _adaptive(self, k: str, g: Tensor) -> None:
        lr, b1, b2, tau = (self.hp[x] for x in ("lr", "beta1", "beta2", "tau"))
        delta = -g
        self.m[k] = b1 * self.m[k] + (1 - b1) * delta
        v, d2 = self.v[k], delta**2
        if self.kind == "adagrad":
            v = v + d2
        elif self.kind == "adam":
            v = b2 * v + (1 - b2) * d2
        elif self.kind == "yogi":
            v = v - (1 - b2) * d2 * torch.sign(v - d2)
        self.v[k] = v
        if self.hp["bias_correction"]:
            m_hat = self.m[k] / (1 - b1**self.t)
            v_hat = v / (1 - b2**self.t)
        else:
            m_hat, v_hat = self.m[k], v
        self.params[k] = self.params[k] + lr * m_hat / (torch.sqrt(v_hat) + tau)


# name -> (the implementation, the same optimizer for the reference)
CASES: dict[str, tuple[ServerOptimizer, str, dict[str, float | bool]]] = {
    "sgd": (sgd(lr=0.7), "sgd", {"lr": 0.7}),
    "momentum": (
        momentum(lr=0.3, beta=0.8),
        "momentum",
        {"lr": 0.3, "beta": 0.8, "nesterov": False},
    ),
    "nesterov": (
        momentum(lr=0.3, beta=0.8, nesterov=True),
        "momentum",
        {"lr": 0.3, "beta": 0.8, "nesterov": True},
    ),
    "adagrad": (
        adagrad(lr=0.2, beta1=0.5, tau=1e-2),
        "adagrad",
        {"lr": 0.2, "beta1": 0.5, "beta2": 0.0, "tau": 1e-2, "bias_correction": False},
    ),
    "adagrad-b1=0": (
        adagrad(lr=0.2),
        "adagrad",
        {"lr": 0.2, "beta1": 0.0, "beta2": 0.0, "tau": 1e-3, "bias_correction": False},
    ),
    "adam": (
        adam(lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3),
        "adam",
        {"lr": 0.1, "beta1": 0.9, "beta2": 0.99, "tau": 1e-3, "bias_correction": True},
    ),
    "adam-nobc": (
        adam(lr=0.1, beta1=0.8, beta2=0.95, tau=1e-2, bias_correction=False),
        "adam",
        {"lr": 0.1, "beta1": 0.8, "beta2": 0.95, "tau": 1e-2, "bias_correction": False},
    ),
    "yogi": (
        yogi(lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3),
        "yogi",
        {"lr": 0.1, "beta1": 0.9, "beta2": 0.99, "tau": 1e-3, "bias_correction": True},
    ),
    "yogi-nobc": (
        yogi(lr=0.1, beta1=0.8, beta2=0.9, tau=1e-2, bias_correction=False),
        "yogi",
        {"lr": 0.1, "beta1": 0.8, "beta2": 0.9, "tau": 1e-2, "bias_correction": False},
    ),
}


def random_params(seed: int, dtype: torch.dtype = torch.float32) -> Params:
    gen = torch.Generator().manual_seed(seed)
    return {
        k: torch.randn(s, generator=gen, dtype=torch.float64).to(dtype) for k, s in SHAPES.items()
    }


def grad_sequence(seed: int, steps: int, dtype: torch.dtype = torch.float32) -> list[Params]:
    """Random gradients whose scale changes from step to step (so Yogi's sign flips both
    ways); step 3 is partial: only "w" and "s"."""
    gen = torch.Generator().manual_seed(1000 + seed)
    out = []
    for i in range(steps):
        scale = 10.0 ** float(torch.empty(()).uniform_(-1.5, 1.0, generator=gen))
        g = {
            k: scale * torch.randn(s, generator=gen, dtype=torch.float64) for k, s in SHAPES.items()
        }
        if i == 2:
            g = {k: g[k] for k in ("w", "s")}
        out.append({k: t.to(dtype) for k, t in g.items()})
    return out


def clone(p: Params) -> Params:
    return {k: t.clone() for k, t in p.items()}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_reference_float32(case: str, seed: int) -> None:
    opt, kind, hp = CASES[case]
    params = random_params(seed)
    ref = Reference(kind, params, **hp)
    state = opt.init(params)
    assert state.step == 0
    objects = {k: (t, t.data_ptr()) for k, t in params.items()}
    slot_objects = {(n, k): t for n, slot in state.slots.items() for k, t in slot.items()}
    for i, grads in enumerate(grad_sequence(seed, steps=6)):
        before = clone(params)
        slots_before = {n: clone(s) for n, s in state.slots.items()}
        ref.step(grads)
        old = state
        state = opt.step(params, clone(grads), state)  # grads are scratch: pass copies
        assert old.step == i and state.step == i + 1  # its own count, by replacement
        for k, t in params.items():
            assert t is objects[k][0] and t.data_ptr() == objects[k][1]  # in place
            assert t.dtype == torch.float32
            torch.testing.assert_close(t.double(), ref.params[k], rtol=1e-5, atol=1e-6)
        for (n, k), t in slot_objects.items():
            assert state.slots[n][k] is t and t.dtype == torch.float32  # slots in place
        if "v" in state.slots:
            for k, t in state.slots["v"].items():
                torch.testing.assert_close(t.double(), ref.v[k], rtol=1e-5, atol=1e-7)
        for k in set(params) - set(grads):  # partial step: these and their slots stay put
            assert torch.equal(params[k], before[k])
            for n, slot in state.slots.items():
                assert torch.equal(slot[k], slots_before[n][k])
    assert any(set(g) != set(params) for g in grad_sequence(seed, steps=6))


@pytest.mark.parametrize("case", ["adagrad", "adam-nobc", "yogi"])
def test_cpu_blocks_cut_through_tensors_and_mixed_dtypes(
    case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CPU path runs the step block by block (optimizers.BLOCK_ELEMENTS): with a block
    of 5 elements the 12 of "w" are cut in three, beside a float64 tensor and an empty one."""
    monkeypatch.setattr(optimizers, "BLOCK_ELEMENTS", 5)
    opt, kind, hp = CASES[case]
    params = random_params(7)
    params["b"] = params["b"].double()
    params["e"] = torch.empty(0)
    ref = Reference(kind, params, **hp)
    state = opt.init(params)
    for grads in grad_sequence(7, steps=5):
        grads = {k: t.to(params[k].dtype) for k, t in grads.items()} | {"e": torch.empty(0)}
        ref.step(grads)
        state = opt.step(params, clone(grads), state)
    assert params["b"].dtype == torch.float64 and params["w"].dtype == torch.float32
    for k, t in params.items():
        torch.testing.assert_close(t.double(), ref.params[k], rtol=1e-5, atol=1e-6)


def test_yogi_differs_from_adam() -> None:
    """Guards the reference comparison above: Yogi's sign rule must actually matter."""
    params_a, params_y = random_params(0), random_params(0)
    oa, oy = adam(lr=0.1), yogi(lr=0.1)
    sa, sy = oa.init(params_a), oy.init(params_y)
    for g in grad_sequence(0, steps=6):
        sa = oa.step(params_a, clone(g), sa)
        sy = oy.step(params_y, clone(g), sy)
    assert not torch.allclose(params_a["w"], params_y["w"], rtol=1e-4)


@pytest.mark.parametrize("case", ["adam", "yogi"])
def test_step_count_is_the_states_own(case: str) -> None:
    """Two states of one optimizer advance independently; bias correction reads t from the
    state it is given, not from a counter in the optimizer or anywhere else."""
    opt, kind, hp = CASES[case]
    grads = grad_sequence(3, steps=4)
    p1, p2 = random_params(1), random_params(2)
    s1, s2 = opt.init(p1), opt.init(p2)
    for g in grads[:3]:
        s1 = opt.step(p1, clone(g), s1)
    assert s1.step == 3 and s2.step == 0
    ref = Reference(kind, random_params(2), **hp)
    ref.step(grads[3])  # t = 1 for the fresh state
    s2 = opt.step(p2, clone(grads[3]), s2)
    assert s2.step == 1
    for k in p2:
        torch.testing.assert_close(p2[k].double(), ref.params[k], rtol=1e-5, atol=1e-6)

    # Same slots, different step: the bias correction (and so the update) must differ.
    a = {k: t.clone() for k, t in p1.items()}
    b = {k: t.clone() for k, t in p1.items()}
    slots_a = {n: clone(s) for n, s in s1.slots.items()}
    slots_b = {n: clone(s) for n, s in s1.slots.items()}
    opt.step(a, clone(grads[3]), OptimizerState(step=3, slots=slots_a))
    opt.step(b, clone(grads[3]), OptimizerState(step=0, slots=slots_b))
    assert not torch.allclose(a["w"], b["w"], rtol=1e-4)


@pytest.mark.parametrize("case", ["adam-nobc", "yogi-nobc", "adagrad", "sgd", "momentum"])
def test_no_bias_correction_ignores_step(case: str) -> None:
    opt, _, _ = CASES[case]
    g = grad_sequence(4, steps=1)[0]
    a, b = random_params(4), random_params(4)
    sa, sb = opt.init(a), opt.init(b)
    sb = dataclasses.replace(sb, step=41)
    sa = opt.step(a, clone(g), sa)
    sb = opt.step(b, clone(g), sb)
    assert sa.step == 1 and sb.step == 42
    for k in a:
        assert torch.equal(a[k], b[k])


def test_state_is_frozen() -> None:
    state = adam().init(random_params(0))
    with pytest.raises(dataclasses.FrozenInstanceError):
        state.step = 5  # type: ignore[misc]


@pytest.mark.parametrize("case", list(CASES))
def test_empty_grads_move_nothing_but_count(case: str) -> None:
    opt, _, _ = CASES[case]
    params = random_params(5)
    before = clone(params)
    state = opt.step(params, {}, opt.init(params))
    assert state.step == 1
    assert all(torch.equal(params[k], before[k]) for k in params)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", list(CASES))
def test_dtype_preserved(case: str, dtype: torch.dtype) -> None:
    opt, kind, hp = CASES[case]
    params = random_params(6, dtype)
    ref = Reference(kind, params, **hp)
    state = opt.init(params)
    for grads in grad_sequence(6, steps=3, dtype=dtype):
        ref.step(grads)
        state = opt.step(params, clone(grads), state)
    for k, t in params.items():
        assert t.dtype == dtype
        for slot in state.slots.values():
            assert slot[k].dtype == dtype
        tol = 1e-10 if dtype == torch.float64 else 5e-2
        torch.testing.assert_close(t.double(), ref.params[k], rtol=tol, atol=tol)


def test_make_optimizer_names_and_hyperparameters() -> None:
    grads = grad_sequence(7, steps=3)
    for name, direct in [
        ("sgd", sgd(lr=0.3)),
        ("momentum", momentum(lr=0.3, beta=0.6)),
        ("adagrad", adagrad(lr=0.3, tau=0.02)),
        ("adam", adam(lr=0.3, beta1=0.7, beta2=0.9, tau=0.02)),
        ("yogi", yogi(lr=0.3, beta1=0.7, beta2=0.9, tau=0.02)),
    ]:
        made = make_optimizer(name, lr=0.3, momentum_beta=0.6, beta1=0.7, beta2=0.9, tau=0.02)
        assert made.name == name
        a, b = random_params(7), random_params(7)
        sa, sb = made.init(a), direct.init(b)
        for g in grads:
            sa = made.step(a, clone(g), sa)
            sb = direct.step(b, clone(g), sb)
        assert all(torch.equal(a[k], b[k]) for k in a), name
    with pytest.raises(ValueError, match="unknown optimizer"):
        make_optimizer("lbfgs", lr=1.0)


@pytest.mark.parametrize("factory", [adam, yogi, adagrad])
def test_tau_must_be_positive(factory) -> None:
    with pytest.raises(ValueError, match="tau"):
        factory(tau=0.0)


def test_first_adam_step_is_lr_times_sign() -> None:
    """Hand-checkable: with bias correction, step 1 has m_hat = -g, v_hat = g^2, so
    theta moves by -lr g / (|g| + tau)."""
    params = {"x": torch.tensor([1.0, -2.0, 0.0])}
    g = torch.tensor([4.0, -0.5, 1e-3])
    opt = adam(lr=0.1, tau=1e-3)
    opt.step(params, {"x": g.clone()}, opt.init(params))
    expected = torch.tensor([1.0, -2.0, 0.0]) - 0.1 * g / (g.abs() + 1e-3)
    torch.testing.assert_close(params["x"], expected)
    assert math.isclose(float(params["x"][2]), -0.05, rel_tol=1e-5)


@pytest.mark.parametrize("kind", ["adam", "yogi"])
def test_portable_and_fused_steps_agree_with_bias_correction(kind: str) -> None:
    """On the CPU Adam and Yogi run torch's fused kernel, which hides the portable step:
    run both on the same inputs, and both against the float64 reference, over steps where
    bias correction still matters (1 - 0.9^t far from 1)."""
    factory = adam if kind == "adam" else yogi
    hp = {"lr": 0.1, "beta1": 0.9, "beta2": 0.99, "tau": 1e-3}
    gen = torch.Generator().manual_seed(4)
    start = {"w": torch.randn(300, 7, generator=gen), "b": torch.randn(5, generator=gen)}
    runs = {}
    for fused in (False, True):
        opt = factory(**hp, fused=fused)
        params = {k: t.clone() for k, t in start.items()}
        state = opt.init(params)
        runs[fused] = (opt, params, state)
    ref = Reference(kind, start, **hp, bias_correction=True)
    g = torch.Generator().manual_seed(5)
    for _ in range(4):
        grads = {k: torch.randn(t.shape, generator=g) for k, t in start.items()}
        ref.step(grads)
        for fused, (opt, params, state) in list(runs.items()):
            state = opt.step(params, {k: t.clone() for k, t in grads.items()}, state)
            runs[fused] = (opt, params, state)
    portable, fused = runs[False][1], runs[True][1]
    for k in start:
        torch.testing.assert_close(portable[k], fused[k], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(portable[k].double(), ref.params[k], rtol=1e-5, atol=1e-6)


def test_first_portable_adam_step_is_lr_times_sign() -> None:
    """By hand: bias-corrected step 1 moves theta by -lr g / (|g| + tau); without the
    correction it would move by -lr 0.1 g / (0.1 |g| + tau), about a tenth of it."""
    params = {"x": torch.tensor([1.0, -2.0, 0.0])}
    g = torch.tensor([4.0, -0.5, 1e-3])
    opt = adam(lr=0.1, tau=1e-3, fused=False)
    opt.step(params, {"x": g.clone()}, opt.init(params))
    expected = torch.tensor([1.0, -2.0, 0.0]) - 0.1 * g / (g.abs() + 1e-3)
    torch.testing.assert_close(params["x"], expected)


def test_fused_yogi_at_a_tie_v_equal_to_delta_squared_keeps_v() -> None:
    """sign(v - Delta^2) = 0: Yogi's v stays v. The fused path's rewrite of v (1 + sign
    = 1) must give the portable step's result there too."""
    g = torch.tensor([0.5, -2.0, 0.25, 3.0])
    results = {}
    for fused in (False, True):
        opt = yogi(lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3, fused=fused)
        params = {"x": torch.zeros(4)}
        state = OptimizerState(step=2, slots={"m": {"x": torch.zeros(4)}, "v": {"x": g * g}})
        state = opt.step(params, {"x": g.clone()}, state)
        results[fused] = (params["x"], state.slots["v"]["x"])
        torch.testing.assert_close(state.slots["v"]["x"], g * g, rtol=1e-6, atol=0.0)
    torch.testing.assert_close(results[True][0], results[False][0], rtol=1e-6, atol=1e-7)
