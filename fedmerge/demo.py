"""``fedmerge demo`` and ``fedmerge resume``: a simulated federation with a live table."""

from __future__ import annotations

import logging
import threading
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from client.metrics import DP_EPSILON, TRAIN_LOSS
from client.tasks.registry import load_task
from coordinator.config import ConfigError, MergeConfig, parse_run_config, resume_overrides
from coordinator.evaluation import headline_of
from coordinator.privacy import plan_of
from coordinator.runs import RESUME_OVERRIDABLE, ResumeError, resumed_config
from coordinator.simulation import simulate
from coordinator.store import (
    RoundRecord,
    StoreError,
    make_session_factory,
    migrated_engine,
    repo,
    resolve_db_url,
)
from dashboard.server import served_url, start_in_background

console = Console()

# `fedmerge demo --task causal-lm`: the tiny model (built on first use), LoRA rank 8 on
# q_proj and v_proj, the exact merge; AdamW on the adapters, two epochs a round.
CAUSAL_LM_DEMO = {"task": "causal-lm", "task-config": "", "local-lr": 0.02,
                  "local-epochs": 2, "batch-size": 8, "partition": "iid"}


def run_demo(
    overrides: dict[str, Any], *, dashboard_port: int | None, keep_dashboard: bool = False
) -> int:
    try:
        cfg = _checked_store(parse_run_config(overrides))
    except (ConfigError, ResumeError, StoreError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 2
    # The table says what the logs would; rejections and failures are in the store.
    logging.getLogger("flwr").setLevel(logging.ERROR)
    url = resolve_db_url(cfg.db or None, cfg.out_path)
    server = _start_dashboard(url, dashboard_port) if dashboard_port else None

    plan = plan_of(cfg)
    headline = load_task(cfg.task, cfg.task_config).headline
    # the clients' records carry accuracy and loss; a task with another headline
    # (perplexity) shows their loss
    shown = "accuracy" if headline == "accuracy" else "loss"
    short = "acc" if shown == "accuracy" else "loss"
    table = Table("round", "merged", "rejected", "train loss", f"central {headline}",
                  f"federated {short}", f"personal {short}", "s", title="per round")
    if plan is not None:
        table.add_column("eps")
    progress = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), console=console,
    )
    task = progress.add_task("starting Ray and the clients", total=cfg.num_server_rounds)

    last: dict[str, float | None] = {}

    def on_commit(rec: RoundRecord) -> None:
        ev = {e.kind: e for e in rec.evaluations}
        last["central"] = _central(ev)
        ok = sum(u.accepted for u in rec.updates)
        table.add_row(
            str(rec.number), str(ok), str(len(rec.updates) - ok),
            _fmt(rec.metrics.get(TRAIN_LOSS)), _fmt(_central(ev)),
            _clients(rec, ev, "federated", shown), _clients(rec, ev, "personalized", shown),
            f"{(rec.finished_at - rec.started_at).total_seconds():.2f}",
            *([] if plan is None else [f"{rec.metrics.get(DP_EPSILON, float('nan')):.3g}"]),
        )
        progress.update(task, completed=rec.number, description="rounds")

    console.print(
        f"[bold]fedmerge demo[/bold]: {cfg.num_clients} clients, "
        + (f"{cfg.task} (Shakespeare roles), " if cfg.task != "digits" else
           f"digits ({cfg.partition}"
           f"{f' alpha={cfg.dirichlet_alpha}' if cfg.partition == 'dirichlet' else ''}), ")
        + f"mode {cfg.mode}, optimizer {cfg.optimizer} (lr {cfg.server_lr}), combiner "
        f"{cfg.combiner}, {cfg.num_server_rounds} rounds"
        + ("" if plan is None else
           f", user-level DP (clip {cfg.dp_clip}, noise multiplier {cfg.dp_noise_multiplier},"
           f" delta {plan.delta:.3g})")
    )
    if server:
        console.print(f"dashboard: [link]{served_url(server)}[/link]")
    try:
        with Live(Group(table, progress), console=console, refresh_per_second=4):
            result = simulate(cfg, num_clients=cfg.num_clients, on_commit=on_commit)
    except Exception as exc:  # noqa: BLE001 - the user sees it, the store recorded it
        console.print(f"[red]the run failed:[/red] {type(exc).__name__}: {exc}")
        return 1
    finally:
        if server and not keep_dashboard:
            server.should_exit = True
    console.print(
        f"\nfinal central {headline} "
        f"[bold]{_fmt(last.get('central', result.central_accuracy))}[/bold] after "
        f"{result.rounds} rounds (run {result.run_id})\n"
        f"database: {result.db_url}\ncheckpoints: {cfg.out_path / 'checkpoints' / result.run_id}\n"
        f"next: fedmerge show {result.run_id[:8]} --out-dir {cfg.out_path}\n"
        f"      fedmerge dashboard --out-dir {cfg.out_path}"
    )
    if plan is not None:
        console.print(
            f"privacy spent: epsilon [bold]{plan.epsilon(result.rounds):.4g}[/bold] at delta "
            f"{plan.delta:.3g}, user level, {result.rounds} rounds (docs/privacy.md)"
        )
    if server and keep_dashboard:
        hold_dashboard(server)
    return 0


def hold_dashboard(server: Any, wait: Any = None) -> None:
    """Keep the dashboard up until Ctrl-C (``wait`` blocks until then; tests pass theirs)."""
    console.print(f"dashboard still at [link]{served_url(server)}[/link]: Ctrl-C stops it")
    try:
        (wait or threading.Event().wait)()
    except KeyboardInterrupt:
        pass
    finally:
        server.should_exit = True
        console.print("dashboard stopped")


def _checked_store(cfg: MergeConfig) -> MergeConfig:
    """Open (and migrate) the store before Ray starts, so an unreachable database or a
    run that cannot be resumed is said at once; a resumed run's stored config."""
    with migrated_engine(resolve_db_url(cfg.db or None, cfg.out_path)) as engine:
        if cfg.resume_run:
            with make_session_factory(engine).begin() as s:
                run_id, resumed = resumed_config(s, cfg)
                stored = dict(repo.get_run(s, run_id).config)
            changed = resume_overrides(stored, cfg, RESUME_OVERRIDABLE)
            said = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changed.items()
                             if k != "resume-run")
            console.print(f"resuming run {run_id} with its stored config"
                          + (f"; overriding {said}" if said else ""), soft_wrap=True)
            return resumed
    return cfg


def _start_dashboard(db_url: str, port: int) -> Any:
    """The dashboard on ``port`` (on a free one, said, if that is taken), or None."""
    return start_in_background(db_url, "127.0.0.1", port, any_free_port=True,
                               say=lambda m: console.print(f"[yellow]{m}[/yellow]"))


def _central(ev: dict) -> float | None:
    """The central evaluation's headline metric (the task's; accuracy for classifiers)."""
    if "central" not in ev:
        return None
    return headline_of(ev["central"].metrics, ev["central"].accuracy)[1]


def _value(ev: dict, kind: str, shown: str) -> float | None:
    return getattr(ev[kind], shown) if kind in ev else None


def _clients(rec: RoundRecord, ev: dict, kind: str, shown: str) -> str:
    """The clients' evaluation (``shown``: accuracy or loss) in a round's row; folded
    (federated-evaluation "folded") a round's replies carry that of the theta before it:
    shown with its round."""
    if kind in ev or not rec.previous_evaluations:
        return _fmt(_value(ev, kind, shown))
    before = {e.kind: e for e in rec.previous_evaluations}
    if kind not in before:
        return "-"
    return f"{_fmt(_value(before, kind, shown))} (r{rec.number - 1})"


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"
