"""The round's exact merge of LoRA replies: each reply's norm is judged from its factors,
its product added into one sum in place; the step equals the dense reference over the
accepted replies, a refused or clipped reply is treated exactly, and no dense offset is
ever made per reply."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import aggregation.lora as lora
from aggregation import ServerState, WeightedMean, sgd
from aggregation.lora import Factors, factors_norm
from client.tasks.api import LowRank
from coordinator.grid import Reply
from coordinator.low_rank import LowRankReplies
from coordinator.merge import Merge
from coordinator.replies import ReplyValidator, UpdateLimits
from tests.utils.replies import reply

SHAPES = {"q": (24, 16, False), "v": (12, 20, True)}  # d_out, d_in, GPT-2's Conv1D layout
RANK, SCALE = 4, 2.0


def layout() -> LowRankReplies:
    lay, template = {}, {}
    for m, (d_out, d_in, transposed) in SHAPES.items():
        lay[f"{m}.weight"] = LowRank(f"{m}.A", f"{m}.B", SCALE, transposed)
        template[f"{m}.A"] = torch.empty(RANK, d_in, device="meta")
        template[f"{m}.B"] = torch.empty(d_out, RANK, device="meta")
    return LowRankReplies(lay, template)


def theta() -> dict[str, torch.Tensor]:
    return {f"{m}.weight": torch.full((d_in, d_out) if t else (d_out, d_in), 0.5)
            for m, (d_out, d_in, t) in SHAPES.items()}


def factors(seed: int, scale: float = 0.1) -> dict[str, np.ndarray]:
    g = np.random.default_rng(seed)
    out = {}
    for m, (d_out, d_in, _) in SHAPES.items():
        out[f"{m}.A"] = (g.standard_normal((RANK, d_in)) * scale).astype(np.float32)
        out[f"{m}.B"] = (g.standard_normal((d_out, RANK)) * scale).astype(np.float32)
    return out


def dense(sent: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """s B A per targeted weight, in float64, in the weight's layout."""
    out = {}
    for m, (_, _, transposed) in SHAPES.items():
        p = SCALE * torch.from_numpy(sent[f"{m}.B"]).double() @ torch.from_numpy(
            sent[f"{m}.A"]).double()
        out[f"{m}.weight"] = p.t() if transposed else p
    return out


def run(sent: list[dict[str, np.ndarray]], examples: list[float], *, clip: float = 0.0,
        limits: UpdateLimits | None = None):
    low = layout()
    merge = Merge(ReplyValidator(limits, low_rank=low), WeightedMean(clip_norm=clip), sgd(lr=1.0))
    params = theta()
    replies = [Reply(str(i + 1), reply(s, examples=e, node=i + 1))
               for i, (s, e) in enumerate(zip(sent, examples, strict=True))]
    state, report = merge(ServerState(params, sgd().init(params)), replies)
    return state.params, report


def expected(sent, examples, scales=None) -> dict[str, torch.Tensor]:
    """theta + the examples-weighted mean of the (scaled) dense offsets, float64."""
    scales = scales or [1.0] * len(sent)
    total = sum(examples)
    out = {k: v.double().clone() for k, v in theta().items()}
    for s, e, c in zip(sent, examples, scales, strict=True):
        for k, d in dense(s).items():
            out[k] += (e / total) * c * d
    return out


def close(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    for k, w in want.items():
        assert float((got[k].double() - w).norm() / w.norm()) < 1e-6, k


def test_factors_norm_is_the_dense_products_norm() -> None:
    g = torch.Generator().manual_seed(3)
    f = Factors(torch.randn(5, 30, generator=g), torch.randn(40, 5, generator=g), 1.5)
    assert factors_norm(f) == pytest.approx(float(lora.dense_offset(f).double().norm()),
                                            rel=1e-6)
    f.a[2, 7] = float("nan")
    assert not np.isfinite(factors_norm(f))


def test_the_step_is_the_weighted_mean_of_the_products_without_a_dense_offset(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_dense(*_a, **_k):
        raise AssertionError("a dense offset was made for a reply")

    monkeypatch.setattr(lora, "dense_offset", no_dense)
    monkeypatch.setattr("coordinator.low_rank.dense_offset", no_dense)
    sent, examples = [factors(i) for i in range(4)], [10.0, 30.0, 5.0, 55.0]
    got, report = run(sent, examples)
    assert report.accepted == 4
    close(got, expected(sent, examples))
    norms = {c.node_id: c.offset_norm for c in report.clients}
    want = float(torch.sqrt(sum(d.norm() ** 2 for d in dense(sent[1]).values())))
    assert norms["2"] == pytest.approx(want, rel=1e-6)


def test_a_refused_reply_leaves_the_sum_as_if_it_never_came() -> None:
    sent, examples = [factors(i) for i in range(3)], [10.0, 20.0, 30.0]
    nan = factors(7)
    nan["v.B"][3, 1] = np.nan
    huge = factors(8, scale=10.0)
    got, report = run([sent[0], nan, sent[1], huge, sent[2]], [10.0, 99.0, 20.0, 99.0, 30.0],
                      limits=UpdateLimits(max_update_norm=50.0))
    reasons = {c.node_id: c.reason for c in report.clients if not c.accepted}
    assert set(reasons) == {"2", "4"}
    assert "non-finite" in reasons["2"] and "max-update-norm" in reasons["4"]
    close(got, expected(sent, examples))


def test_a_clipped_reply_is_added_once_scaled_to_the_clip_norm() -> None:
    sent, examples = [factors(0, scale=0.05), factors(1, scale=0.5)], [10.0, 10.0]
    norms = [float(torch.sqrt(sum(d.norm() ** 2 for d in dense(s).values()))) for s in sent]
    clip = (norms[0] + norms[1]) / 2  # only the second is clipped
    got, report = run(sent, examples, clip=clip)
    assert report.accepted == 2
    close(got, expected(sent, examples, [1.0, clip / norms[1]]))
