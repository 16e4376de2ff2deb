"""Opening a run in the store: a new one, or a resumed one from its newest usable
checkpoint (falling back past damaged ones: each is named in an "error" event).

On resume, rounds left in flight become aborted, rounds after the checkpoint used are
discarded (they are redone), and the stored config is used, but for the keys that may
change on resume (``RESUME_OVERRIDABLE``).
"""

from __future__ import annotations

from logging import INFO, WARNING
from pathlib import Path

from flwr.common import log
from sqlalchemy.orm import Session, sessionmaker

from aggregation import OptimizerState, ServerOptimizer, ServerState, make_optimizer
from client.tasks.registry import load_task
from client.tasks.runtime import build_model, shared_params
from coordinator.checkpoints import CheckpointError, load_checkpoint
from coordinator.config import ConfigError, MergeConfig, parse_run_config, resume_overrides
from coordinator.store import in_transaction, repo

# On resume these may differ from the stored run's config; everything else must not.
RESUME_OVERRIDABLE = ("num-server-rounds", "resume-run", "db", "out-dir", "round-timeout")


class ResumeError(RuntimeError):
    """The run cannot be resumed; the message says why and what was checked."""


def open_run(
    sessions: sessionmaker[Session], cfg: MergeConfig, flower_run_id: int | str | None
) -> tuple[str, MergeConfig, ServerState]:
    """(run id, the run's config, the state to go on from): resumed when
    ``cfg.resume_run`` names a run, else a new run from the initial model."""
    if cfg.resume_run:
        return resume_run(sessions, cfg, flower_run_id)
    return start_run(sessions, cfg, flower_run_id), cfg, initial_state(cfg)


def server_optimizer(cfg: MergeConfig) -> ServerOptimizer:
    return make_optimizer(
        cfg.optimizer, lr=cfg.server_lr, momentum_beta=cfg.momentum, beta1=cfg.beta1,
        beta2=cfg.beta2, tau=cfg.tau,
    )


def initial_state(cfg: MergeConfig) -> ServerState:
    task = load_task(cfg.task, cfg.task_config)
    params = shared_params(task, build_model(task, cfg.seed))  # the tensors that travel
    return ServerState(params, server_optimizer(cfg).init(params), 0)


def start_run(sessions: sessionmaker[Session], cfg: MergeConfig, flower_run_id) -> str:
    with sessions.begin() as s:
        return repo.create_run(
            s, name=cfg.run_name or f"{cfg.mode}-{cfg.optimizer}-{cfg.combiner}",
            config=cfg.as_run_config(), mode=cfg.mode, optimizer=cfg.optimizer,
            combiner=cfg.combiner, num_rounds_planned=cfg.num_server_rounds,
            out_dir=str(cfg.out_path), flower_run_id=flower_run_id,
        )


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


def nothing_to_resume(s: Session, wanted: str, *, shown: int = 5) -> str:
    """Why there is no run ``wanted`` ('latest' or an id) to resume, and the latest runs."""
    latest = list(repo.list_runs(s))[:shown]
    what = ("no unfinished run to resume" if wanted == "latest"
            else f"no run {wanted!r} to resume")
    if not latest:
        return f"{what}: the database has no runs"
    counts = repo.committed_round_counts(s)
    lines = [f"  {r.id[:8]}  {r.status:<11} {counts.get(r.id, 0)}/{r.num_rounds_planned} "
             f"rounds  {r.started_at:%Y-%m-%d %H:%M}  {r.name}" for r in latest]
    return f"{what}; the latest runs:\n" + "\n".join(lines)


def resume_run(
    sessions: sessionmaker[Session], cfg: MergeConfig, flower_run_id
) -> tuple[str, MergeConfig, ServerState]:
    with sessions.begin() as s:
        run_id, cfg = resumed_config(s, cfg)
        aborted = repo.abort_inflight_rounds(s, run_id)
        candidates = [(r.number, r.checkpoint_path, r.checkpoint_sha256)
                      for r in repo.committed_rounds(s, run_id)]
    try:
        state, problems = newest_good_checkpoint(cfg, candidates)
    except ResumeError as exc:  # the run cannot go on: say so in the store, not only here
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


def newest_good_checkpoint(
    cfg: MergeConfig, candidates: list[tuple[int, str | None, str | None]]
) -> tuple[ServerState, list[str]]:
    """The state of the newest usable checkpoint among ``candidates`` (round, path, hash;
    newest first) and what was wrong with the newer ones; the initial state if there are
    none. Raises ResumeError if there are some and none is usable."""
    problems: list[str] = []
    template = initial_state(cfg)  # the model's tensor names and the optimizer's slots
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
