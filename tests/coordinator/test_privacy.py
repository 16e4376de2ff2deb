"""The accountant (coordinator/privacy.py), the dp-* config keys and the DP merge in the
strategy, on fake replies. The expected epsilons are computed here, straight from
dp-accounting, for the analysis docs/privacy.md states: fixed-size sampling without
replacement, replace-one neighbours (sensitivity 2C, so noise multiplier z / 2)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from dp_accounting import NeighboringRelation, dp_event
from dp_accounting.rdp import RdpAccountant
from typer.testing import CliRunner

from aggregation import adam
from coordinator.config import ConfigError, parse_run_config
from coordinator.federation import build_merge
from coordinator.privacy import DEMO_SETTINGS, dp_combiner, plan_of
from coordinator.store import (
    EvaluationRecord,
    RoundRecord,
    make_engine,
    make_session_factory,
    repo,
    upgrade_to_head,
)
from fedmerge.cli import app
from tests.utils.replies import reply
from tests.utils.strategies import make_strategy

runner = CliRunner()

DP = {"dp": "central", "dp-clip": 0.5, "dp-noise-multiplier": 1.2}
rng = np.random.default_rng(3)
THETA = {"w": rng.normal(size=(4, 3)).astype(np.float32), "b": np.zeros(3, np.float32)}


def library_epsilon(n: int, m: int, z: float, rounds: int, delta: float,
                    count_stddev: float | None = None) -> float:
    gaussians = [dp_event.GaussianDpEvent(z / 2)]
    if count_stddev is not None:
        gaussians.append(dp_event.GaussianDpEvent(count_stddev))
    acc = RdpAccountant(neighboring_relation=NeighboringRelation.REPLACE_ONE)
    acc.compose(dp_event.SampledWithoutReplacementDpEvent(
        n, m, dp_event.ComposedDpEvent(gaussians)), rounds)
    return acc.get_epsilon(delta)


def offsets(k: int, scale: float = 1.0) -> list[dict[str, np.ndarray]]:
    return [{n: (scale * rng.normal(size=v.shape)).astype(np.float32) for n, v in THETA.items()}
            for _ in range(k)]


def dp_strategy(cfg, optimizer=None):
    return make_strategy(THETA, optimizer, dp_combiner(cfg, seed=11), privacy=plan_of(cfg),
                         limits=build_merge(cfg).validator.limits)


def test_recorded_epsilon_after_each_round_is_the_librarys_figure() -> None:
    cfg = parse_run_config({**DP, "num-clients": 20, "fraction-train": 0.25, "min-nodes": 2})
    strategy, rec = dp_strategy(cfg)
    for r in range(1, 4):
        _, metrics = strategy.aggregate_train(r, [reply(o, node=i + 1)
                                                 for i, o in enumerate(offsets(5))])
        assert metrics["dp-epsilon"] == pytest.approx(
            library_epsilon(20, 5, 1.2, r, 20 ** -1.1), rel=1e-9)
    assert [r.train_metrics["dp-epsilon"] for r in rec.reports] == sorted(
        r.train_metrics["dp-epsilon"] for r in rec.reports)
    assert rec.reports[-1].diagnostics["dp-clip"] == 0.5


def test_adaptive_clip_epsilon_accounts_for_the_noisy_count() -> None:
    cfg = parse_run_config({**DP, "num-clients": 10, "min-nodes": 10, "dp-delta": 1e-3,
                            "dp-adaptive-clip": True, "dp-quantile-noise": 0.1})
    plan = plan_of(cfg)
    assert plan is not None and plan.mechanism.count_stddev == pytest.approx(1.0)
    assert plan.epsilon(6) == pytest.approx(library_epsilon(10, 10, 1.2, 6, 1e-3, 1.0),
                                            rel=1e-9)
    fixed = plan_of(parse_run_config({**DP, "num-clients": 10, "min-nodes": 10,
                                      "dp-delta": 1e-3}))
    assert fixed is not None and plan.epsilon(6) > fixed.epsilon(6)


def test_the_budget_allows_the_rounds_whose_epsilon_fits() -> None:
    plan = plan_of(parse_run_config({**DP, "num-clients": 10, "min-nodes": 10}))
    assert plan is not None
    e3, e4 = plan.epsilon(3), plan.epsilon(4)
    for budget, allowed in [((e3 + e4) / 2, 3), (e3, 3), (e4, 4), (1e9, 20)]:
        cfg = parse_run_config({**DP, "num-clients": 10, "min-nodes": 10,
                                "dp-epsilon-budget": budget})
        budgeted = plan_of(cfg)
        assert budgeted is not None and budgeted.rounds_allowed(20) == allowed
    assert "round 4 would bring epsilon to" in plan_of(parse_run_config(
        {**DP, "num-clients": 10, "min-nodes": 10, "dp-epsilon-budget": e3})).stop_reason(4)


def test_a_client_claiming_a_million_examples_moves_theta_no_more_than_with_ten() -> None:
    cfg = parse_run_config({**DP, "num-clients": 4, "min-nodes": 4})
    offs = offsets(2)
    thetas = []
    for claimed in (10, 1e6):
        strategy, _ = dp_strategy(cfg)
        arrays, _ = strategy.aggregate_train(1, [reply(offs[0], examples=claimed, node=1),
                                                 reply(offs[1], examples=10, node=2)])
        thetas.append({k: arrays[k].numpy().copy() for k in THETA})
    for k in THETA:
        np.testing.assert_array_equal(thetas[0][k], thetas[1][k])


def test_a_dp_round_steps_even_when_every_reply_is_rejected() -> None:
    cfg = parse_run_config({**DP, "num-clients": 4, "min-nodes": 4})
    strategy, rec = dp_strategy(cfg, adam(lr=0.1))
    bad = offsets(1)[0]
    bad["w"][0, 0] = np.nan
    arrays, metrics = strategy.aggregate_train(1, [reply(bad, node=1)])
    assert rec.reports[-1].accepted == 0
    assert arrays is not None and metrics is not None and "dp-epsilon" in metrics
    assert not np.array_equal(arrays["w"].numpy(), THETA["w"])


@pytest.mark.parametrize(("overrides", "names"), [
    ({"dp": "central", "dp-noise-multiplier": 1.0}, ["dp-clip", "> 0"]),
    ({"dp": "central", "dp-clip": -1.0, "dp-noise-multiplier": 1.0}, ["dp-clip"]),
    ({"dp": "central", "dp-clip": 1.0}, ["dp-noise-multiplier", "> 0"]),
    ({"dp-noise-multiplier": 1.0}, ["dp-noise-multiplier", "dp is off"]),
    ({"dp-clip": 1.0, "dp-epsilon-budget": 3.0}, ["dp-clip", "dp-epsilon-budget", "dp is off"]),
    ({**DP, "combiner": "median"}, ["combiner", "void the guarantee"]),
    ({**DP, "combiner": "fisher"}, ["combiner"]),
    ({**DP, "max-norm-ratio": 3.0}, ["max-norm-ratio", "other clients"]),
    ({**DP, "clip-norm": 1.0}, ["clip-norm", "dp-clip"]),
    ({**DP, "dp-delta": 1.0}, ["dp-delta"]),
    ({**DP, "dp-epsilon-budget": 0.01}, ["dp-epsilon-budget", "below one round"]),
    ({**DP, "num-clients": 3, "min-nodes": 4}, ["num-clients", "samples 4"]),
    ({"dp": "local"}, ["dp", "'off' or 'central'"]),
])
def test_bad_dp_config_is_refused_at_start_naming_the_key(overrides: dict, names: list) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_run_config(overrides)
    for name in names:
        assert name in str(exc.value)


def test_personal_mode_and_an_absolute_norm_bound_keep_the_guarantee() -> None:
    cfg = parse_run_config({**DP, "mode": "personal", "max-update-norm": 10.0})
    assert plan_of(cfg) is not None
    assert build_merge(cfg).validator.limits.max_update_norm == 10.0


def test_non_finite_and_oversized_offsets_are_refused_before_the_dp_sum() -> None:
    cfg = parse_run_config({**DP, "num-clients": 4, "min-nodes": 4, "max-update-norm": 10.0})
    good, bad, big = offsets(1)[0], offsets(1)[0], offsets(1, scale=50.0)[0]
    bad["w"][0, 0] = np.nan
    mixed, rec = dp_strategy(cfg)
    theta_mixed, _ = mixed.aggregate_train(
        1, [reply(bad, node=1), reply(big, node=2), reply(good, node=3)])
    reasons = {c.node_id: c.reason for c in rec.reports[-1].clients if not c.accepted}
    assert set(reasons) == {"1", "2"}
    assert "finite" in reasons["1"] and "max-update-norm" in reasons["2"]
    alone, _ = dp_strategy(cfg)
    theta_alone, _ = alone.aggregate_train(1, [reply(good, node=3)])
    for k in THETA:  # the same noise (same seed): the refused offsets left no trace
        np.testing.assert_array_equal(theta_mixed[k].numpy(), theta_alone[k].numpy())


def test_the_demo_settings_are_a_valid_dp_run() -> None:
    cfg = parse_run_config({"dp": "central", **DEMO_SETTINGS, "num-clients": 10,
                            "min-nodes": 10})
    plan = plan_of(cfg)
    assert plan is not None and plan.delta == pytest.approx(10 ** -1.1)
    assert plan_of(parse_run_config({})) is None


def test_demo_with_dp_refuses_bad_settings_naming_the_key(tmp_path: Path) -> None:
    base = ["demo", "--no-dashboard", "--out-dir", str(tmp_path)]
    result = runner.invoke(app, [*base, "--dp", "central", "--set", "dp-clip=0"])
    assert result.exit_code == 2 and "dp-clip" in result.output
    result = runner.invoke(app, [*base, "--dp", "local"])
    assert result.exit_code == 2 and "dp:" in result.output


def test_show_prints_epsilon_per_round(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'fedmerge.db'}")
    upgrade_to_head(engine)
    with make_session_factory(engine).begin() as s:
        run_id = repo.create_run(
            s, name="dp", config={}, mode="global", optimizer="sgd", combiner="mean",
            num_rounds_planned=2, out_dir=str(tmp_path))
        for n, eps in ((1, 1.25), (2, 1.875)):
            now = datetime.now(UTC)
            repo.start_round(s, run_id, n, now)
            repo.commit_round(s, run_id, RoundRecord(
                n, now, now, 0.0, 0.0, 0.0, 0.0, {"dp-epsilon": eps}, None, None, (), ()))
    engine.dispose()
    shown = runner.invoke(app, ["show", run_id[:8], "--out-dir", str(tmp_path)],
                          env={"COLUMNS": "200"})  # a table this wide: no truncated cells
    assert shown.exit_code == 0 and "eps" in shown.output, shown.output
    assert "1.250" in shown.output and "1.875" in shown.output


def test_show_prints_the_tasks_headline_where_a_task_has_no_accuracy(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'fedmerge.db'}")
    upgrade_to_head(engine)
    with make_session_factory(engine).begin() as s:
        run_id = repo.create_run(
            s, name="regression", config={}, mode="global", optimizer="sgd", combiner="mean",
            num_rounds_planned=1, out_dir=str(tmp_path))
        now = datetime.now(UTC)
        repo.start_round(s, run_id, 1, now)
        central = EvaluationRecord("central", 0.25, None, 40,
                                   {"headline": "r2", "higher-is-better": True, "r2": 0.625})
        repo.commit_round(s, run_id, RoundRecord(
            1, now, now, 0.0, 0.0, 0.0, 0.0, {}, None, None, (), (central,)))
    engine.dispose()
    shown = runner.invoke(app, ["show", run_id[:8], "--out-dir", str(tmp_path)],
                          env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    assert "0.625" in shown.output and "r2" in shown.output
