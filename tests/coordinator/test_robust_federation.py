"""Hostile clients, partial sub-models and the curvature-weighted merge.

Strategy-level tests run on fake replies. The ``simulation`` tests share one start of
Flower's simulation engine (Ray): ten SuperNodes on IID digits play every federation of
``RUNS`` in turn (``tests/utils/hostile.py``), each recorded in its own run store. In the
hostile scenario partition 8 sends its offset sign-flipped and scaled x10, partition 9
sends NaN entries (which validation rejects, whatever the combiner).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord

from aggregation import FisherWeightedMean, adam, make_combiner, sgd
from client.models import build_model
from coordinator.checkpoints import load_checkpoint
from coordinator.config import parse_run_config
from coordinator.federation import FederationResult
from coordinator.replies import UpdateLimits, UpdateRejected, decode_reply
from coordinator.store import make_engine, make_session_factory, repo
from tests.utils.hostile import Scenario, scripted_client_app, simulate_scenarios, tamper
from tests.utils.replies import reply
from tests.utils.strategies import MergeHarness, Recorder
from tests.utils.strategies import make_strategy as make_theta_strategy

# --------------------------------------------------------------------------------------
# Strategy level: fake replies
# --------------------------------------------------------------------------------------

rng = np.random.default_rng(7)
THETA = {
    "w": rng.normal(size=(4, 3)).astype(np.float32),
    "b": rng.normal(size=3).astype(np.float32),
}


def make_strategy(optimizer=None, combiner=None, **kw) -> tuple[MergeHarness, Recorder]:
    return make_theta_strategy(THETA, optimizer, combiner, **kw)


def offsets(k: int) -> list[dict[str, np.ndarray]]:
    return [{n: rng.normal(size=v.shape).astype(np.float32) for n, v in THETA.items()}
            for _ in range(k)]


def test_partial_updates_are_averaged_per_tensor_over_the_clients_that_sent_them() -> None:
    full, partial = offsets(2)
    strategy, rec = make_strategy()
    arrays, _ = strategy.aggregate_train(1, [
        reply(full, examples=10, node=1),
        reply({"w": partial["w"]}, examples=30, node=2, manifest=["w"]),
    ])
    assert rec.reports[-1].accepted == 2
    np.testing.assert_allclose(
        arrays["w"].numpy(), THETA["w"] + (10 * full["w"] + 30 * partial["w"]) / 40, atol=1e-6
    )
    # b: only client 1 sent it, so its weight renormalises to 1.
    np.testing.assert_allclose(arrays["b"].numpy(), THETA["b"] + full["b"], atol=1e-6)


def test_a_tensor_nobody_sends_does_not_move_nor_its_optimizer_slots() -> None:
    strategy, _ = make_strategy(optimizer=adam(lr=0.1))
    strategy.aggregate_train(1, [reply(o, node=i + 1) for i, o in enumerate(offsets(3))])
    before = {k: t.clone() for k, t in strategy.state.params.items()}
    slots = {s: {k: t.clone() for k, t in ts.items()}
             for s, ts in strategy.state.opt_state.slots.items()}
    partial = [reply({"w": o["w"]}, node=i + 1, manifest=["w"])
               for i, o in enumerate(offsets(3))]
    strategy.aggregate_train(2, partial)
    state = strategy.state
    # Adam's momentum is non-zero after round 1, yet b must not move by it in round 2.
    assert torch.equal(state.params["b"], before["b"])
    assert not torch.equal(state.params["w"], before["w"])
    for s in ("m", "v"):
        assert torch.equal(state.opt_state.slots[s]["b"], slots[s]["b"])
    assert state.opt_state.step == 2


def test_a_reply_without_manifest_must_send_every_tensor() -> None:
    good = offsets(1)[0]
    strategy, rec = make_strategy()
    strategy.aggregate_train(1, [
        reply(good, node=1),
        reply({"w": good["w"]}, node=2),  # no manifest: a missing tensor
        reply({"w": good["w"]}, node=3, manifest=["w", "b"]),  # manifest says both
        reply({"w": good["w"]}, node=4, manifest=["w", "nope"]),
    ])
    reasons = {c.node_id: c.reason for c in rec.reports[-1].clients if not c.accepted}
    assert set(reasons) == {"2", "3", "4"}
    assert "missing tensor" in reasons["2"] and "missing tensor" in reasons["3"]
    assert "unknown" in reasons["4"]


@pytest.mark.parametrize("optimizer", [sgd(lr=1.0), adam(lr=0.05)], ids=["sgd", "adam"])
def test_fisher_merge_with_equal_fishers_equals_the_weighted_mean(optimizer) -> None:
    fisher = {n: rng.uniform(0.1, 3.0, size=v.shape).astype(np.float32)
              for n, v in THETA.items()}
    by_fisher, _ = make_strategy(optimizer=optimizer, combiner=make_combiner("fisher"))
    by_mean, _ = make_strategy(optimizer=optimizer, combiner=make_combiner("mean"))
    for rnd in (1, 2, 3):
        offs, examples = offsets(4), [5, 40, 12, 90]
        a, _ = by_fisher.aggregate_train(rnd, [
            reply(o, examples=n, node=i + 1, fisher=fisher)
            for i, (o, n) in enumerate(zip(offs, examples, strict=True))
        ])
        b, _ = by_mean.aggregate_train(rnd, [
            reply(o, examples=n, node=i + 1)
            for i, (o, n) in enumerate(zip(offs, examples, strict=True))
        ])
        for k in THETA:
            np.testing.assert_allclose(a[k].numpy(), b[k].numpy(), rtol=1e-5, atol=1e-6)


def test_fisher_merge_weights_each_coordinate_by_its_curvature() -> None:
    o1 = {k: np.ones_like(v) for k, v in THETA.items()}
    o2 = {k: -np.ones_like(v) for k, v in THETA.items()}
    f1 = {k: np.full_like(v, 3.0) for k, v in THETA.items()}
    f2 = {k: np.full_like(v, 1.0) for k, v in THETA.items()}
    f2["b"][0] = 0.0  # client 2 has no curvature there: client 1 alone decides it
    strategy, _ = make_strategy(combiner=FisherWeightedMean())
    arrays, _ = strategy.aggregate_train(1, [
        reply(o1, examples=10, node=1, fisher=f1), reply(o2, examples=10, node=2, fisher=f2),
    ])
    # (10*3*1 + 10*1*(-1)) / (10*3 + 10*1) = 0.5 per coordinate; b[0]: 30/30 = 1.
    expected_b = THETA["b"] + np.array([1.0, 0.5, 0.5], np.float32)
    np.testing.assert_allclose(arrays["w"].numpy(), THETA["w"] + 0.5, atol=1e-6)
    np.testing.assert_allclose(arrays["b"].numpy(), expected_b, atol=1e-6)


def test_fisher_replies_are_validated() -> None:
    good = offsets(1)[0]
    ones = {k: np.ones_like(v) for k, v in THETA.items()}
    strategy, rec = make_strategy(combiner=FisherWeightedMean())
    strategy.aggregate_train(1, [
        reply(good, node=1, fisher=ones),
        reply(good, node=2, fisher={**ones, "b": -ones["b"]}),
        reply(good, node=3, fisher={**ones, "b": np.full(3, np.inf, np.float32)}),
        reply(good, node=4, fisher={"w": ones["w"]}),
    ])
    reasons = {c.node_id: c.reason for c in rec.reports[-1].clients if not c.accepted}
    assert set(reasons) == {"2", "3", "4"}
    assert "negative" in reasons["2"] and "non-finite" in reasons["3"]
    assert "other tensors" in reasons["4"]


def test_the_attacks_keep_names_dtypes_and_shapes() -> None:
    offset = offsets(1)[0]
    record = ArrayRecord({k: Array(v) for k, v in offset.items()})
    flipped, nan = tamper(record, "sign-flip-x10"), tamper(record, "nan")
    for k, v in offset.items():
        assert flipped[k].numpy().dtype == np.float32 and flipped[k].numpy().shape == v.shape
        np.testing.assert_array_equal(flipped[k].numpy(), -10 * v)
        got = nan[k].numpy()
        assert got.dtype == np.float32 and got.shape == v.shape
        assert np.isnan(got).any() and np.isfinite(got).any()
    template = {k: torch.from_numpy(v) for k, v in THETA.items()}
    with pytest.raises(UpdateRejected, match="non-finite"):
        msg = reply(offset)
        msg.content["arrays"] = nan
        decode_reply(msg, template, UpdateLimits())


def test_a_rejected_reply_counts_in_krums_budget_instead_of_stopping_the_round() -> None:
    strategy, rec = make_strategy(combiner=make_combiner("multi-krum", byzantine=2))
    good = offsets(6)
    bad = {**good[0], "b": np.array([np.nan, 0, 0], np.float32)}
    replies = [reply(o, node=i + 1) for i, o in enumerate(good)] + [reply(bad, node=7)]
    # The NaN sender is one of the f = 2 hostile clients: f' = 1, and 6 valid >= 2f' + 3.
    strategy.aggregate_train(1, replies)
    report = rec.reports[-1]
    reasons = {c.node_id: c.reason or "" for c in report.clients if not c.accepted}
    assert "non-finite" in reasons.pop("7")
    assert report.stepped and report.accepted == 5  # multi-Krum keeps K - f' = 5 of 6
    assert len(reasons) == 1 and "not selected by krum" in next(iter(reasons.values()))
    assert any(not np.array_equal(strategy.state.params[k].numpy(), THETA[k]) for k in THETA)


def test_a_round_no_rule_can_merge_says_so_once_and_the_run_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    strategy, rec = make_strategy(combiner=make_combiner("multi-krum", byzantine=3))
    good = offsets(4)
    bad = {**good[0], "b": np.array([np.inf, 0, 0], np.float32)}
    replies = [reply(o, node=i + 1) for i, o in enumerate(good)] + [reply(bad, node=5)]
    with caplog.at_level("WARNING", logger="flwr"):
        strategy.aggregate_train(1, replies)  # f' = 2: 4 valid < 2f' + 3 = 7
    for k in THETA:  # the run goes on, theta unchanged
        np.testing.assert_array_equal(strategy.state.params[k].numpy(), THETA[k])
    report = rec.reports[-1]
    assert strategy.state.round == 1 and report.accepted == 0 and not report.stepped
    assert "needs at least 7 valid clients, got 4" in str(report.diagnostics["error"])
    not_merged = [r for r in caplog.messages if "not merged" in r or "nothing merged" in r]
    # One line for the refused reply, one for the round: none per honest client.
    assert len(not_merged) == 2, not_merged
    assert sum("nothing merged" in r for r in not_merged) == 1


def test_krum_rejects_a_partial_update_instead_of_failing_the_run() -> None:
    strategy, rec = make_strategy(combiner=make_combiner("multi-krum", byzantine=1))
    good = offsets(6)
    replies = [reply(o, node=i + 1) for i, o in enumerate(good)]
    replies.append(reply({"w": good[0]["w"]}, node=7, manifest=["w"]))
    strategy.aggregate_train(1, replies)
    reasons = {c.node_id: c.reason for c in rec.reports[-1].clients if not c.accepted}
    assert "partial update" in reasons.pop("7")
    # The refused reply is the f = 1 hostile client Krum allows for: f' = 0, multi-Krum
    # keeps K - f' = 6 of the 6 full updates.
    assert reasons == {}
    assert rec.reports[-1].accepted == 6


# --------------------------------------------------------------------------------------
# Simulation: one Ray start, every federation below
# --------------------------------------------------------------------------------------

NUM_CLIENTS = 10
FLIPPER, NAN_SENDER = 8, 9
ROUNDS = 10
# IID digits, FedAdam (Reddi et al. 2021) with server-lr 0.05: 0.90-0.92 after 10 rounds
# on the honest federation; client-side evaluation off (the coordinator's central
# accuracy on the held-out split is what the tests compare).
BASE: dict[str, Any] = {
    "num-server-rounds": ROUNDS, "num-clients": NUM_CLIENTS, "min-nodes": NUM_CLIENTS,
    "partition": "iid", "local-epochs": 1, "optimizer": "adam", "server-lr": 0.05,
    "fraction-evaluate": 0.0, "seed": 0,
}
SCENARIOS = {
    "default": Scenario(),
    "honest": Scenario(),
    "hostile": Scenario(attacks={FLIPPER: "sign-flip-x10", NAN_SENDER: "nan"}),
    # Flower's simulation engine gives a node no config but its partition: the wrapper
    # adds train-tensors as a SuperNode's --node-config would.
    "partial-odd": Scenario(node_config={p: {"train-tensors": "fc2"}
                                         for p in range(1, NUM_CLIENTS, 2)}),
    "partial-all": Scenario(node_config={p: {"train-tensors": "fc2"}
                                         for p in range(NUM_CLIENTS)}),
}
ROBUST = {
    "median": {"combiner": "median"},
    "trimmed-mean": {"combiner": "trimmed-mean", "trim-beta": 0.2},
    "multi-krum": {"combiner": "multi-krum", "krum-byzantine": 2},
    "mean+max-norm-ratio": {"max-norm-ratio": 3.0},
}
RUNS: dict[str, tuple[str, dict[str, Any]]] = {
    "baseline": ("honest", {}),
    "mean": ("hostile", {}),
    **{name: ("hostile", overrides) for name, overrides in ROBUST.items()},
    "partial-odd": ("partial-odd", {"num-server-rounds": 3}),
    "partial-all": ("partial-all", {"num-server-rounds": 3}),
    "fisher": ("honest", {"combiner": "fisher", "num-server-rounds": 4}),
}


@dataclass(frozen=True)
class Federation:
    result: FederationResult
    rounds: list[Any]  # RoundRow
    updates: list[Any]  # ClientUpdateRow
    central: dict[int, float]  # round -> accuracy on the coordinator's held-out split

    @property
    def final(self) -> float:
        return self.central[max(self.central)]

    def rejected(self, round_number: int) -> list[Any]:
        return [u for u in self.updates if u.round_number == round_number and not u.accepted]

    def accepted_partitions(self, round_number: int) -> set[int]:
        return {u.partition_id for u in self.updates
                if u.round_number == round_number and u.accepted}

    def final_params(self) -> dict[str, torch.Tensor]:
        last = max(self.rounds, key=lambda r: r.number)
        return load_checkpoint(Path(last.checkpoint_path), last.checkpoint_sha256).params


def _read(result: FederationResult) -> Federation:
    engine = make_engine(result.db_url)
    with make_session_factory(engine)() as s:
        rounds = list(repo.rounds_of(s, result.run_id))
        updates = list(repo.updates_of(s, result.run_id))
        central = {e.round_number: e.accuracy for e in repo.evaluations_of(s, result.run_id)
                   if e.kind == "central"}
    engine.dispose()
    return Federation(result, rounds, updates, central)


@pytest.fixture(scope="module")
def federations(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Federation]:
    root = tmp_path_factory.mktemp("robust")
    runs = [
        (scenario, parse_run_config({**BASE, **overrides, "out-dir": str(root / label)}))
        for label, (scenario, overrides) in RUNS.items()
    ]
    results = simulate_scenarios(
        runs, num_clients=NUM_CLIENTS, client_app=scripted_client_app(SCENARIOS)
    )
    out = {label: _read(r) for label, r in zip(RUNS, results, strict=True)}
    print("\ncentral accuracy (initial -> final):")
    for label, f in out.items():
        print(f"  {label:<22} {f.central[0]:.3f} -> {f.final:.3f}")
    return out


def _all_rounds(f: Federation) -> list[int]:
    return sorted(r.number for r in f.rounds)


@pytest.mark.simulation
def test_the_honest_baseline_is_healthy(federations: dict[str, Federation]) -> None:
    base = federations["baseline"]
    assert _all_rounds(base) == list(range(1, ROUNDS + 1))
    assert all(r.status == "committed" and r.num_accepted == NUM_CLIENTS for r in base.rounds)
    assert base.central[0] < 0.2 and base.final > 0.85


@pytest.mark.simulation
def test_the_nan_sender_is_rejected_with_its_reason_recorded(
    federations: dict[str, Federation],
) -> None:
    for label, (scenario, _) in RUNS.items():
        if scenario != "hostile":
            continue
        f = federations[label]
        for number in _all_rounds(f):
            nan = [u for u in f.rejected(number) if "non-finite" in (u.reason or "")]
            assert len(nan) == 1, (label, number, [u.reason for u in f.rejected(number)])
            assert NAN_SENDER not in f.accepted_partitions(number)


@pytest.mark.simulation
def test_the_weighted_mean_collapses_under_a_sign_flipper(
    federations: dict[str, Federation],
) -> None:
    base, mean = federations["baseline"], federations["mean"]
    assert mean.final < base.final - 0.30
    # Not the NaN sender's doing (rejected, never merged): the flipper is merged each round.
    for number in _all_rounds(mean):
        assert mean.accepted_partitions(number) == set(range(NUM_CLIENTS)) - {NAN_SENDER}
        assert [u.reason for u in mean.rejected(number)] == [
            "offset has non-finite values (NaN or Inf)"
        ]


@pytest.mark.simulation
@pytest.mark.parametrize("label", list(ROBUST))
def test_robust_merges_stay_within_3_points_of_the_honest_baseline(
    federations: dict[str, Federation], label: str
) -> None:
    base, f = federations["baseline"], federations[label]
    assert _all_rounds(f) == list(range(1, ROUNDS + 1))
    assert f.final >= base.final - 0.03, f"{label}: {f.final:.3f} vs {base.final:.3f}"


@pytest.mark.simulation
def test_multi_krum_never_selects_the_sign_flipper(federations: dict[str, Federation]) -> None:
    f = federations["multi-krum"]
    for r in f.rounds:
        partition_of = {u.node_id: u.partition_id for u in f.updates
                        if u.round_number == r.number and u.accepted}
        selected = {partition_of[n] for n in r.metrics["combiner-selected"]}
        # the NaN sender is one of the f = 2: f' = 1, K - f' = 8 of the 9 valid updates
        assert len(selected) == NUM_CLIENTS - 1 - 1
        assert FLIPPER not in selected


@pytest.mark.simulation
def test_max_norm_ratio_rejects_the_sign_flipper_with_its_reason(
    federations: dict[str, Federation],
) -> None:
    f = federations["mean+max-norm-ratio"]
    for number in _all_rounds(f):
        reasons = [u.reason or "" for u in f.rejected(number)]
        assert len(reasons) == 2
        assert sum("non-finite" in r for r in reasons) == 1
        assert sum("exceeds max-norm-ratio 3.0 x the round's median" in r for r in reasons) == 1
        assert f.accepted_partitions(number) == set(range(NUM_CLIENTS)) - {FLIPPER, NAN_SENDER}


@pytest.mark.simulation
def test_when_no_client_trains_fc1_it_stays_bit_for_bit_the_initial_one(
    federations: dict[str, Federation],
) -> None:
    f = federations["partial-all"]
    assert all(r.num_accepted == NUM_CLIENTS and r.num_rejected == 0 for r in f.rounds)
    initial = build_model("mlp", seed=BASE["seed"]).state_dict()
    final = f.final_params()
    for name in ("fc1.weight", "fc1.bias"):
        assert torch.equal(final[name], initial[name]), name
    for name in ("fc2.weight", "fc2.bias"):  # trained by partial clients only: it moves
        assert not torch.equal(final[name], initial[name]), name
    assert f.final > f.central[0] + 0.3


@pytest.mark.simulation
def test_a_federation_of_full_and_partial_clients_moves_every_tensor(
    federations: dict[str, Federation],
) -> None:
    f = federations["partial-odd"]
    assert all(r.num_accepted == NUM_CLIENTS and r.num_rejected == 0 for r in f.rounds)
    norms = {u.partition_id: u.offset_norm for u in f.updates if u.round_number == 1}
    assert all(n is not None and n > 0 for n in norms.values())
    initial = build_model("mlp", seed=BASE["seed"]).state_dict()
    final = f.final_params()
    assert all(not torch.equal(final[k], initial[k]) for k in initial)
    assert f.final > f.central[0] + 0.5


@pytest.mark.simulation
def test_the_fisher_weighted_merge_trains(federations: dict[str, Federation]) -> None:
    f = federations["fisher"]
    assert all(r.num_accepted == NUM_CLIENTS for r in f.rounds)
    assert math.isfinite(f.final) and f.final > f.central[0] + 0.5
