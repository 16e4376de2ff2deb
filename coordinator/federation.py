"""One federated run from start (or resume) to finish, on whatever Grid Flower gives:
the simulation engine's or the deployment engine's. The ServerApp, the demo and the
tests all come through ``run_federation``."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from logging import INFO, WARNING
from pathlib import Path

import torch
from flwr.app import ConfigRecord
from flwr.common import log
from flwr.serverapp import Grid
from sqlalchemy.orm import Session, sessionmaker

from aggregation import OptimizerState, ServerState, make_combiner, make_optimizer
from client.datasets import central_test_set
from client.models import build_model
from client.task import ClientTask
from client.trainer import evaluate, load_params
from coordinator.checkpoints import CheckpointError, load_checkpoint
from coordinator.config import ConfigError, MergeConfig, parse_run_config, resume_overrides
from coordinator.grid import StreamingGrid
from coordinator.ledger import RoundLedger
from coordinator.payloads import params_record
from coordinator.replies import UpdateLimits
from coordinator.reports import nothing_to_resume
from coordinator.store import (
    RoundRecord,
    in_transaction,
    make_session_factory,
    migrated_engine,
    repo,
    resolve_db_url,
)
from coordinator.store.paths import private_dir
from coordinator.strategy import MergeStrategy

# On resume these may differ from the stored run's config; everything else must not.
RESUME_OVERRIDABLE = ("num-server-rounds", "resume-run", "db", "out-dir", "round-timeout")


@dataclass(frozen=True)
class FederationResult:
    run_id: str
    db_url: str
    rounds: int  # rounds merged in total (resumed ones included)
    central_accuracy: float | None
    params: dict[str, torch.Tensor]


class ResumeError(RuntimeError):
    """The run cannot be resumed; the message says why and what was checked."""


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
        return _federate(grid, cfg, make_session_factory(engine), db_url,
                         flower_run_id=flower_run_id, on_commit=on_commit)


def _federate(
    grid: Grid,
    cfg: MergeConfig,
    sessions: sessionmaker[Session],
    db_url: str,
    *,
    flower_run_id: int | str | None,
    on_commit: Callable[[RoundRecord], None] | None,
) -> FederationResult:
    out_dir = cfg.out_path
    if cfg.resume_run:
        run_id, cfg, state = _resume(sessions, cfg, flower_run_id)
    else:
        run_id, state = _start(sessions, cfg, flower_run_id)

    x_test, y_test = central_test_set(cfg.dataset)
    model = build_model(cfg.model)

    def central_eval(s: ServerState) -> tuple[float, float, int]:
        loss, acc = evaluate(load_params(model, s.params), x_test, y_test, torch.device("cpu"))
        return loss, acc, len(y_test)

    streaming = grid if isinstance(grid, StreamingGrid) else StreamingGrid(grid)
    ledger = RoundLedger(
        state=state, sessions=sessions, run_id=run_id,
        checkpoint_dir=out_dir / "checkpoints" / run_id, grid=streaming,
        central_eval=central_eval, on_commit=on_commit,
    )
    strategy = build_strategy(cfg, state, ledger)
    remaining = cfg.num_server_rounds - state.round
    if strategy.holds_every_offset:
        log(WARNING, "combiner %s holds every offset of a round: memory O(K x P), not O(P)",
            cfg.combiner)
    log(INFO, "run %s: %s rounds to go (%s done), db %s", run_id, remaining, state.round, db_url)
    try:
        if remaining > 0:
            random.seed(cfg.seed * 1_000_003 + state.round)  # Flower samples with `random`
            strategy.start(
                grid=streaming,
                initial_arrays=params_record(state.params),
                num_rounds=remaining,
                timeout=cfg.round_timeout,
                train_config=client_config(cfg),
                evaluate_config=client_config(cfg),
                evaluate_fn=ledger.evaluate,
            )
    except BaseException as exc:
        with sessions.begin() as s:
            status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            repo.abort_inflight_rounds(s, run_id)  # never committed: said, not left running
            repo.finish_run(s, run_id, status, error=f"{type(exc).__name__}: {exc}")
        raise
    in_transaction(sessions, lambda s: repo.finish_run(s, run_id, "completed"))
    final = strategy.state
    acc = ledger.central_accuracy  # the last round's, already measured
    if acc is None:  # nothing left to run: a resumed run that had finished
        _, acc, _ = central_eval(final)
    return FederationResult(run_id, db_url, final.round, acc, final.params)


def build_strategy(cfg: MergeConfig, state: ServerState, ledger: RoundLedger) -> MergeStrategy:
    return MergeStrategy(
        state=state,
        combiner=make_combiner(
            cfg.combiner, trim_beta=cfg.trim_beta, byzantine=cfg.krum_byzantine,
            clip_norm=cfg.clip_norm, max_norm=cfg.max_update_norm,
        ),
        optimizer=_optimizer(cfg),
        gradient_scale=cfg.gradient_scale,
        limits=UpdateLimits(max_examples=cfg.max_examples, max_update_norm=cfg.max_update_norm),
        max_norm_ratio=cfg.max_norm_ratio,
        observer=ledger,
        fraction_train=cfg.fraction_train,
        fraction_evaluate=cfg.fraction_evaluate,
        min_train_nodes=cfg.min_nodes,
        min_evaluate_nodes=cfg.min_nodes if cfg.fraction_evaluate > 0 else 0,
        min_available_nodes=cfg.min_nodes,
    )


def client_config(cfg: MergeConfig) -> ConfigRecord:
    """The round's ConfigRecord: the client task's keys of the run config."""
    values = cfg.as_run_config()
    return ConfigRecord({k: values[k] for k in ClientTask.config_keys()})


def _optimizer(cfg: MergeConfig):
    return make_optimizer(
        cfg.optimizer, lr=cfg.server_lr, momentum_beta=cfg.momentum, beta1=cfg.beta1,
        beta2=cfg.beta2, tau=cfg.tau,
    )


def _initial_state(cfg: MergeConfig) -> ServerState:
    model = build_model(cfg.model, seed=cfg.seed)
    params = {k: t.detach().clone() for k, t in model.state_dict().items()}
    return ServerState(params, _optimizer(cfg).init(params), 0)


def _start(sessions, cfg: MergeConfig, flower_run_id) -> tuple[str, ServerState]:
    with sessions.begin() as s:
        run_id = repo.create_run(
            s, name=cfg.run_name or f"{cfg.mode}-{cfg.optimizer}-{cfg.combiner}",
            config=cfg.as_run_config(), mode=cfg.mode, optimizer=cfg.optimizer,
            combiner=cfg.combiner, num_rounds_planned=cfg.num_server_rounds,
            out_dir=str(cfg.out_path), flower_run_id=flower_run_id,
        )
    return run_id, _initial_state(cfg)


def resumed_config(s: Session, cfg: MergeConfig) -> tuple[str, MergeConfig]:
    """The run ``cfg.resume_run`` names and its stored config, with the keys that may
    change on resume (RESUME_OVERRIDABLE) taken from ``cfg``."""
    row = (repo.latest_unfinished_run(s) if cfg.resume_run == "latest"
           else repo.get_run(s, cfg.resume_run))
    if row is None:
        raise ResumeError(nothing_to_resume(s, cfg.resume_run))
    stored = dict(row.config)
    changed = resume_overrides(stored, cfg, RESUME_OVERRIDABLE)
    stored.update({k: new for k, (_, new) in changed.items()})
    if shown := {k: v for k, v in changed.items() if k != "resume-run"}:
        log(INFO, "run %s resumes with its stored config; overriding %s", row.id,
            ", ".join(f"{k} ({old!r} -> {new!r})" for k, (old, new) in shown.items()))
    try:
        return row.id, parse_run_config(stored)
    except ConfigError as exc:
        raise ResumeError(f"run {row.id}: stored config no longer valid: {exc}") from None


def _resume(sessions, cfg: MergeConfig, flower_run_id) -> tuple[str, MergeConfig, ServerState]:
    with sessions.begin() as s:
        run_id, cfg = resumed_config(s, cfg)
        aborted = repo.abort_inflight_rounds(s, run_id)
        candidates = [(r.number, r.checkpoint_path, r.checkpoint_sha256)
                      for r in repo.committed_rounds(s, run_id)]
    try:
        state, problems = _newest_good_checkpoint(cfg, candidates)
    except ResumeError as exc:
        error = f"ResumeError: {exc}"
        in_transaction(sessions, lambda s: repo.finish_run(s, run_id, "failed", error))
        raise
    with sessions.begin() as s:
        for p in problems:
            repo.add_event(s, run_id, "error", p)
        if state.round < (candidates[0][0] if candidates else 0):
            repo.discard_rounds_after(s, run_id, state.round)
        repo.mark_resumed(
            s, run_id, flower_run_id=None if flower_run_id is None else str(flower_run_id),
            message=f"resumed after round {state.round}; aborted in flight: {aborted or 'none'}",
        )
    log(INFO, "resuming run %s after round %s (aborted: %s)", run_id, state.round, aborted)
    return run_id, cfg, state


def _newest_good_checkpoint(
    cfg: MergeConfig, candidates: list[tuple[int, str | None, str | None]]
) -> tuple[ServerState, list[str]]:
    problems: list[str] = []
    template = _initial_state(cfg)  # the model's tensor names and the optimizer's slots
    for number, path, digest in candidates:
        if not path or not digest:
            problems.append(f"round {number}: no checkpoint recorded")
            continue
        try:
            ck = load_checkpoint(Path(path), digest)
        except CheckpointError as exc:
            problems.append(f"round {number}: {exc}")
            log(WARNING, "checkpoint of round %s unusable: %s", number, exc)
            continue
        if ck.params.keys() != template.params.keys():
            problems.append(f"round {number}: checkpoint {path} holds other tensors than the model")
            continue
        slots = {name: ck.opt_slots.get(name, {}) for name in template.opt_state.slots}
        return ServerState(ck.params, OptimizerState(ck.opt_step, slots), number), problems
    if candidates:
        raise ResumeError(
            "no usable checkpoint among the committed rounds: " + "; ".join(problems)
        )
    return template, problems
