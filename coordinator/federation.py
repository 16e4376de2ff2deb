"""One federated run from start (or resume) to finish, on whatever Grid Flower gives:
the simulation engine's or the deployment engine's. The ServerApp, the demo and the
tests all come through ``run_federation``: it opens the store and the run
(coordinator/runs.py), builds the round loop (coordinator/rounds.py) from the config,
runs it and records how the run ended."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from logging import INFO, WARNING

import torch
from flwr.app import ConfigRecord
from flwr.common import log
from flwr.serverapp import Grid

from aggregation import make_combiner
from client.task import ClientTask
from coordinator.buffered import BufferedLoop, buffered_loop
from coordinator.config import MergeConfig
from coordinator.evaluation import CentralEvaluation
from coordinator.grid import StreamingGrid
from coordinator.journal import RunJournal
from coordinator.low_rank import low_rank_replies
from coordinator.merge import Merge
from coordinator.privacy import dp_combiner, plan_of
from coordinator.replies import ReplyValidator, UpdateLimits
from coordinator.root_update import server_update
from coordinator.rounds import RoundLoop
from coordinator.runs import open_run, server_optimizer
from coordinator.store import RoundRecord, make_session_factory, migrated_engine, resolve_db_url
from coordinator.store.paths import private_dir
from coordinator.strategy import MergeStrategy


@dataclass(frozen=True)
class FederationResult:
    run_id: str
    db_url: str
    rounds: int  # rounds merged in total (resumed ones included)
    central_accuracy: float | None
    params: dict[str, torch.Tensor]


def run_federation(
    grid: Grid,
    cfg: MergeConfig,
    *,
    flower_run_id: int | str | None = None,
    on_commit: Callable[[RoundRecord], None] | None = None,
) -> FederationResult:
    private_dir(cfg.out_path)
    db_url = resolve_db_url(cfg.db or None, cfg.out_path)
    with migrated_engine(db_url) as engine:
        sessions = make_session_factory(engine)
        run_id, cfg, state = open_run(sessions, cfg, flower_run_id)
        journal = RunJournal(sessions, run_id)
        streaming = grid if isinstance(grid, StreamingGrid) else StreamingGrid(grid)
        merge = build_merge(cfg)
        if merge.holds_every_offset:
            log(WARNING, "combiner %s holds every offset of a round: memory O(K x P), not O(P)",
                cfg.combiner)
        plan = plan_of(cfg)  # dp central: stop before the round that would exceed the budget
        last = cfg.num_server_rounds if plan is None else plan.rounds_allowed(cfg.num_server_rounds)
        loop: RoundLoop | BufferedLoop = RoundLoop(
            grid=streaming, strategy=build_strategy(cfg), merge=merge,
            central=CentralEvaluation(cfg.task, cfg.task_config, seed=cfg.seed), journal=journal,
            checkpoint_dir=cfg.out_path / "checkpoints" / run_id,
            train_config=client_config(cfg), evaluate_config=client_config(cfg),
            timeout=cfg.round_timeout, seed=None if plan else cfg.seed, on_commit=on_commit,
            evaluation=cfg.client_evaluation,
        )
        if cfg.merge == "async":
            loop = buffered_loop(cfg, loop, sessions, run_id)
        log(INFO, "run %s: %s rounds to go (%s done), db %s", run_id,
            max(last - state.round, 0), state.round, db_url)
        try:
            state, central = loop.run(state, last)
        except BaseException as exc:
            status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            journal.finish(status, error=f"{type(exc).__name__}: {exc}")
            raise
        if plan is not None and last < cfg.num_server_rounds:
            log(WARNING, "%s", plan.stop_reason(last + 1))
            journal.event("privacy-budget", plan.stop_reason(last + 1))
        journal.finish("completed")
    return FederationResult(run_id, db_url, state.round, central.accuracy, state.params)


def build_merge(cfg: MergeConfig) -> Merge:
    """The run's algorithm: validator, combiner and server optimizer."""
    combiner = dp_combiner(cfg) if cfg.dp == "central" else make_combiner(
        cfg.combiner, trim_beta=cfg.trim_beta, byzantine=cfg.krum_byzantine,
        clip_norm=cfg.clip_norm, bucket_size=cfg.bucket_size, cc_tau=cfg.cc_tau,
        cc_iterations=cfg.cc_iterations, seed=cfg.seed, fltrust_scale=cfg.fltrust_scale,
        fltrust_byzantine=cfg.fltrust_byzantine,
        server_update=server_update(cfg) if cfg.combiner == "fltrust" else None)
    limits = UpdateLimits(max_examples=cfg.max_examples, max_update_norm=cfg.max_update_norm,
                          max_norm_ratio=cfg.max_norm_ratio,
                          norm_ratio_byzantine=cfg.norm_ratio_byzantine)
    validator = ReplyValidator(limits, full_only=combiner.full_updates_only,
                               low_rank=low_rank_replies(cfg.task, cfg.task_config, cfg.seed))
    return Merge(validator, combiner, server_optimizer(cfg), cfg.gradient_scale,
                 privacy=plan_of(cfg), threads=cfg.merge_threads)


def build_strategy(cfg: MergeConfig) -> MergeStrategy:
    """Flower's sampling for the run: fractions and minimum node counts."""
    return MergeStrategy(
        fraction_train=cfg.fraction_train,
        fraction_evaluate=cfg.fraction_evaluate,
        min_train_nodes=cfg.min_nodes,
        min_evaluate_nodes=cfg.min_nodes if cfg.fraction_evaluate > 0 else 0,
        min_available_nodes=cfg.min_nodes,
    )


def client_config(cfg: MergeConfig) -> ConfigRecord:
    """The round's ConfigRecord: the client task's keys of the run config."""
    values = {**cfg.as_run_config(), "federated-evaluation": cfg.client_evaluation}
    return ConfigRecord({k: values[k] for k in ClientTask.config_keys()})
