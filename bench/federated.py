"""Several strategies, this project's and Flower's, on one simulated federation.

``run_contenders`` starts Flower's simulation engine once and its ServerApp runs every
``Contender`` in turn on the same Grid, the same client nodes and the same data:

- ours: ``coordinator.federation.run_federation`` with the base run config plus the
  contender's overrides (its own SQLite store and checkpoints in a temporary folder);
- Flower's: the strategy's own ``start()`` with central evaluation.

Our ClientApp replies with the offset theta_i = client model - theta; Flower's
strategies average models. ``bench_client`` wraps our ClientApp: when the round's config
says ``bench-reply = "model"`` it adds theta back before replying. FedProx's mu travels
as ``prox-mu`` (our trainer adds (mu/2)||x - theta||^2).

``personal`` mode keeps each client's offset in ``context.state`` for the rest of the
simulation: a personal contender must come last (``run_contenders`` checks this).

``engine="inprocess"`` runs the same contenders without Ray: ``BenchGrid`` calls the
same client functions in this process, one node after the other, with a fresh grid
(fresh node contexts) per contender. The client seeds depend on (run seed, partition,
round) only, so both engines train alike (up to float rounding); the in-process one
starts in no time, which a tuning protocol of hundreds of short runs needs.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid

from bench.common import stamp
from bench.inprocess import InProcessGrid

BENCH_REPLY_KEY = "bench-reply"

bench_client = ClientApp()


@bench_client.train()
def _train(msg: Message, context: Context) -> Message:
    from client.client_app import train
    from client.task import METRICS_KEY, OFFSET_KEY

    flower = msg.content["config"].get(BENCH_REPLY_KEY, "offset") == "model"
    if flower:
        # Flower's FedAdam sends float64 arrays; a Flower client's load_state_dict would
        # cast them to the model's float32, our client refuses a dtype it does not hold
        theta = msg.content[OFFSET_KEY].to_torch_state_dict()
        if any(t.dtype == torch.float64 for t in theta.values()):
            msg.content[OFFSET_KEY] = ArrayRecord(
                {k: t.float() if t.dtype == torch.float64 else t for k, t in theta.items()})
    reply = train(msg, context)
    if not flower or reply.has_error():
        return reply
    theta = msg.content[OFFSET_KEY].to_torch_state_dict()  # theta itself, in a request
    offset = reply.content[OFFSET_KEY].to_torch_state_dict()
    model = {k: (t + offset[k]) if k in offset else t for k, t in theta.items()}
    content = RecordDict({OFFSET_KEY: ArrayRecord(model), METRICS_KEY: reply.content[METRICS_KEY]})
    return Message(content=content, reply_to=msg)


@bench_client.evaluate()
def _evaluate(msg: Message, context: Context) -> Message:
    from client.client_app import evaluate_shared

    return evaluate_shared(msg, context)


class BenchGrid(InProcessGrid):
    """``num_clients`` nodes in this process, node i holding partition i - 1, answering
    as ``bench_client`` does (a model instead of an offset when the round asks for it);
    ``send_and_receive`` for Flower's strategies, push and pull for ours."""

    def __init__(self, num_clients: int) -> None:
        super().__init__(range(num_clients), num_clients)

    def _answer(self, m: Message) -> None:
        node = m.metadata.dst_node_id
        stamp(node)
        answer = _train if m.metadata.message_type == MessageType.TRAIN else _evaluate
        self._ready.append(answer(m, self.contexts[node]))

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> Iterable[Message]:
        return self.pull_messages(list(self.push_messages(messages)))


@dataclass(frozen=True)
class Contender:
    """One strategy to run. ``flower`` builds a Flower strategy (given the number of
    client nodes); without it the contender is ours, configured by ``overrides``."""

    label: str
    overrides: Mapping[str, Any] = field(default_factory=dict)
    flower: Callable[[int], Any] | None = None
    train_extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def personal(self) -> bool:
        return self.overrides.get("mode") == "personal"


@dataclass
class Curve:
    """What one contender did, per round (index 0 = the initial model)."""

    label: str
    acc: list[float] = field(default_factory=list)  # central accuracy
    loss: list[float] = field(default_factory=list)
    round_s: list[float] = field(default_factory=list)  # wall seconds per round
    wait_s: list[float] = field(default_factory=list)  # ours: waiting for client replies
    merge_s: list[float] = field(default_factory=list)  # ours: the merge itself
    clients: dict[str, dict[str, float]] = field(default_factory=dict)  # last federated eval
    participation: dict[str, int] = field(default_factory=dict)  # ours: rounds per client
    seconds: float = 0.0
    error: str | None = None

    def rounds_to(self, target: float) -> int | None:
        for r, a in enumerate(self.acc):
            if r > 0 and a >= target:
                return r
        return None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _run_ours(grid: Grid, base: Mapping[str, Any], c: Contender, work: str,
              central) -> Curve:
    from coordinator.config import parse_run_config
    from coordinator.federation import run_federation
    from coordinator.runs import initial_state

    cfg = parse_run_config({**base, **c.overrides, "out-dir": work, "db": "",
                            "run-name": c.label})
    curve = Curve(c.label)
    initial = central(initial_state(cfg).params)
    curve.acc.append(initial.accuracy)
    curve.loss.append(initial.loss)

    def on_commit(rec) -> None:
        ev = {e.kind: e for e in rec.evaluations}
        curve.acc.append(ev["central"].accuracy)
        curve.loss.append(ev["central"].loss)
        curve.round_s.append((rec.finished_at - rec.started_at).total_seconds())
        curve.wait_s.append(rec.wait_s)
        curve.merge_s.append(rec.merge_s)
        for u in rec.updates:
            if u.accepted and u.partition_id is not None:
                pid = str(u.partition_id)
                curve.participation[pid] = curve.participation.get(pid, 0) + 1
        if "federated" in ev:
            curve.clients = {str(k): dict(v) for k, v in ev["federated"].metrics["clients"].items()}

    run_federation(grid, cfg, on_commit=on_commit)
    return curve


def _run_flower(grid: Grid, base: Mapping[str, Any], c: Contender, num_nodes: int,
                central) -> Curve:
    from coordinator.config import parse_run_config
    from coordinator.federation import client_config
    from coordinator.runs import initial_state

    cfg = parse_run_config(dict(base))
    strategy = c.flower(num_nodes)
    train_config = ConfigRecord({**dict(client_config(cfg)), BENCH_REPLY_KEY: "model",
                                 **c.train_extra})
    init = ArrayRecord(initial_state(cfg).params)
    curve = Curve(c.label)
    stamps: list[float] = []

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        ev = central(arrays.to_torch_state_dict())
        curve.acc.append(ev.accuracy)
        curve.loss.append(ev.loss)
        now = time.perf_counter()
        if stamps:
            curve.round_s.append(now - stamps[-1])
        stamps.append(now)
        return MetricRecord({"central-acc": ev.accuracy, "central-loss": ev.loss})

    random.seed(cfg.seed * 1_000_003)  # Flower samples clients with `random`
    strategy.start(grid=grid, initial_arrays=init, num_rounds=cfg.num_server_rounds,
                   timeout=cfg.round_timeout, train_config=train_config,
                   evaluate_config=ConfigRecord(dict(client_config(cfg))),
                   evaluate_fn=evaluate_fn)
    return curve


def run_contenders(
    base: Mapping[str, Any],
    contenders: Sequence[Contender],
    *,
    num_clients: int,
    client_cpus: float = 1.0,
    verbose: bool = False,
    on_done: Callable[[Curve], None] | None = None,
    client_app: ClientApp | None = None,
    engine: Literal["ray", "inprocess"] = "ray",
) -> dict[str, Curve]:
    """Run every contender, in order, in one simulation; returns their curves by label.
    A contender that raises is recorded with its error and the others go on.
    ``client_app``: one that wraps ``bench_client`` (default: bench_client itself; Ray
    only). ``engine="inprocess"``: no Ray, a fresh ``BenchGrid`` per contender."""
    personal_at = [i for i, c in enumerate(contenders) if c.personal]
    if personal_at and personal_at != [len(contenders) - 1]:
        raise ValueError("a personal-mode contender must be the last one, and only one: "
                         "its offsets stay in the nodes' context.state")
    if engine == "inprocess" and client_app is not None:
        raise ValueError("client_app is for the Ray engine; in process the nodes answer "
                         "as bench_client does")
    from coordinator.simulation import run_server_main

    curves: dict[str, Curve] = {}
    work = tempfile.mkdtemp(prefix="fedmerge-bench-")

    def main(grid: Grid | None, context: Context | None) -> None:
        import logging

        from bench.common import quiet

        quiet()
        # each strategy warns that fraction_evaluate = 0 skips federated evaluation
        logging.getLogger("flwr").setLevel(logging.ERROR)
        from coordinator.config import parse_run_config
        from coordinator.evaluation import CentralEvaluation

        cfg = parse_run_config(dict(base))
        central = CentralEvaluation(cfg.task, cfg.task_config, seed=cfg.seed)
        for c in contenders:
            if engine == "inprocess":
                grid = BenchGrid(num_clients)
                stamp(0)  # the coordinator's messages need a task identity too
            t0 = time.perf_counter()
            try:
                if c.flower is None:
                    curve = _run_ours(grid, base, c, os.path.join(work, f"c{len(curves)}"),
                                      central)
                else:
                    curve = _run_flower(grid, base, c, num_clients, central)
            except Exception as exc:  # noqa: BLE001 - recorded, shown, the others go on
                curve = Curve(c.label, error=f"{type(exc).__name__}: {exc}")
                traceback.print_exc()
            curve.seconds = time.perf_counter() - t0
            curves[c.label] = curve
            if on_done is not None:
                on_done(curve)

    try:
        if engine == "inprocess":
            main(None, None)
        else:
            run_server_main(main, num_clients=num_clients,
                            client_app=client_app or bench_client,
                            client_cpus=client_cpus, verbose=verbose)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    missing = [c.label for c in contenders if c.label not in curves]
    if missing:
        raise RuntimeError(f"the simulation ended before running {missing}")
    return curves


def flower_options(num_nodes: int, *, fraction_train: float = 1.0,
                   min_train: int | None = None) -> dict[str, Any]:
    """A Flower strategy's sampling arguments: ``fraction_train`` of ``num_nodes`` (at
    least ``min_train``, default all), no federated evaluation."""
    return {"fraction_train": fraction_train, "fraction_evaluate": 0.0,
            "min_train_nodes": min_train or num_nodes, "min_evaluate_nodes": 0,
            "min_available_nodes": num_nodes}


def flower_strategies(*, fedavgm_momentum: float = 0.9, fedadam_eta: float = 0.1,
                      prox_mu: float = 0.1, fraction_train: float = 1.0,
                      min_train: int | None = None) -> list[Contender]:
    """Flower's FedAvg, FedAvgM, FedAdam and FedProx, with Flower's own defaults but for
    the fractions and node counts (and the given hyperparameters)."""
    from flwr.serverapp.strategy import FedAdam, FedAvg, FedAvgM, FedProx

    def opts(n: int) -> dict[str, Any]:
        return flower_options(n, fraction_train=fraction_train, min_train=min_train)

    return [
        Contender("Flower FedAvg", flower=lambda n: FedAvg(**opts(n))),
        Contender(f"Flower FedAvgM ({fedavgm_momentum})", flower=lambda n: FedAvgM(
            **opts(n), server_learning_rate=1.0, server_momentum=fedavgm_momentum)),
        Contender(f"Flower FedAdam (eta {fedadam_eta})",
                  flower=lambda n: FedAdam(**opts(n), eta=fedadam_eta)),
        Contender(f"Flower FedProx (mu {prox_mu})",
                  flower=lambda n: FedProx(**opts(n), proximal_mu=prox_mu),
                  train_extra={"prox-mu": prox_mu}),
    ]
