"""A digits federation with user-level DP on Flower's simulation engine (Ray): the stated
(epsilon, delta) reaches the stated accuracy, epsilon is recorded per round, and the
budget stops the run before the round that would exceed it.

The setting: 100 clients (IID digits, about 14 examples each), all sampled every round,
clip C = 0.3 (a little below the offsets' median norm, about 0.38 here), noise
multiplier z = 2, server momentum 0.9: the noise per coordinate is z C / 100 = 0.006 per
round. `bench.privacy` measured 0.88 after 10 rounds at z = 2, 0.80-0.87 at z = 4 (0.90
without DP). The test asks for 0.60 after 8 rounds at z = 2 (0.81 when written, with a
bumpy way there: 0.44 at round 5): the margin covers the noise's draws, which are not
fixed (the noise is seeded from the OS, as it must be).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from dp_accounting import NeighboringRelation, dp_event
from dp_accounting.rdp import RdpAccountant

from coordinator.config import parse_run_config
from coordinator.simulation import simulate
from coordinator.store import make_engine, make_session_factory, repo
from fedmerge.reports import history

pytestmark = pytest.mark.simulation

CLIENTS, ROUNDS_ALLOWED = 100, 8
DELTA = CLIENTS ** -1.1  # the default: 6.3e-3
EPSILON_STATED = 12.0  # the library gives 11.68 for these 8 rounds
ACCURACY_STATED = 0.60


def library_epsilon(rounds: int) -> float:
    """dp-accounting's figure for m = N = 100, z = 2 (z / 2 under replace-one)."""
    acc = RdpAccountant(neighboring_relation=NeighboringRelation.REPLACE_ONE)
    acc.compose(dp_event.SampledWithoutReplacementDpEvent(
        CLIENTS, CLIENTS, dp_event.GaussianDpEvent(2.0 / 2)), rounds)
    return acc.get_epsilon(DELTA)


def test_dp_digits_reaches_the_stated_accuracy_and_stops_at_the_budget(tmp_path: Path) -> None:
    budget = (library_epsilon(ROUNDS_ALLOWED) + library_epsilon(ROUNDS_ALLOWED + 1)) / 2
    cfg = parse_run_config({
        "num-server-rounds": ROUNDS_ALLOWED + 2, "num-clients": CLIENTS, "min-nodes": CLIENTS,
        "partition": "iid", "local-epochs": 5, "local-lr": 0.1, "optimizer": "momentum",
        "server-lr": 1.0, "fraction-evaluate": 0.0, "device": "cpu", "out-dir": str(tmp_path),
        "dp": "central", "dp-clip": 0.3, "dp-noise-multiplier": 2.0,
        "dp-epsilon-budget": budget,
    })
    result = simulate(cfg, num_clients=CLIENTS)

    assert result.rounds == ROUNDS_ALLOWED  # stopped before the round that would exceed
    engine = make_engine(result.db_url)
    with make_session_factory(engine)() as s:
        rows = history(s, result.run_id)
        events = [(e.kind, e.message) for e in repo.events_of(s, result.run_id)]
        run = repo.get_run(s, result.run_id)
    engine.dispose()
    assert run is not None and run.status == "completed"
    assert [r["round"] for r in rows] == list(range(1, ROUNDS_ALLOWED + 1))
    for r in rows:
        assert r["dp_epsilon"] == pytest.approx(library_epsilon(r["round"]), rel=1e-9)
    assert rows[-1]["dp_epsilon"] <= budget < library_epsilon(ROUNDS_ALLOWED + 1)
    stops = [m for kind, m in events if kind == "privacy-budget"]
    assert len(stops) == 1 and f"round {ROUNDS_ALLOWED + 1} would bring epsilon" in stops[0]

    assert rows[-1]["dp_epsilon"] <= EPSILON_STATED
    assert result.central_accuracy is not None
    assert result.central_accuracy >= ACCURACY_STATED
