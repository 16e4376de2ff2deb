"""``fedmerge runs``, ``show`` and ``export``: the store, read back for a person."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.table import Column, Table
from safetensors.torch import save_file
from sqlalchemy.orm import Session

from client.metrics import DP_EPSILON, TRAIN_LOSS
from coordinator.checkpoints import load_checkpoint
from coordinator.evaluation import headline_of
from coordinator.store import (
    StoreError,
    existing_engine,
    make_session_factory,
    repo,
    resolve_db_url,
)

console = Console()


@contextmanager
def _session(db: str | None, out_dir: Path) -> Iterator[Session]:
    """A session on an existing store; a missing or unreachable one ends the command with
    one line (exit 2), and nothing is created."""
    url = resolve_db_url(db, out_dir.expanduser().resolve())
    try:
        with existing_engine(url) as engine, make_session_factory(engine)() as s:
            yield s
    except StoreError as exc:
        console.print(f"[red]error:[/red] {exc}", soft_wrap=True)
        raise SystemExit(2) from None


def _run_or_exit(s: Session, run: str):
    try:
        row = repo.get_run(s, run)
    except repo.AmbiguousRunId as exc:
        raise SystemExit(str(exc)) from None
    if row is None:
        raise SystemExit(f"no run {run!r} in the database")
    return row


def print_runs(db: str | None, out_dir: Path) -> None:
    table = Table(
        Column("run", no_wrap=True, min_width=8), "name", "status", "mode", "optimizer",
        "combiner", Column("rounds", no_wrap=True), Column("started", no_wrap=True),
    )
    with _session(db, out_dir) as s:
        counts = repo.committed_round_counts(s)
        for r in repo.list_runs(s):
            done = counts.get(r.id, 0)
            table.add_row(r.id[:8], r.name, r.status, r.mode, r.optimizer, r.combiner,
                          f"{done}/{r.num_rounds_planned}", f"{r.started_at:%m-%d %H:%M}")
    console.print(table)


def history(s: Session, run_id: str) -> list[dict[str, object]]:
    """One flat row per round: timings, train metrics and each evaluation's accuracy
    (of committed rounds: the same store read as the dashboard's)."""
    evals: dict[int, dict[str, float | None]] = {}
    for e in repo.committed_evaluations(s, run_id):
        evals.setdefault(e.round_number, {})[f"{e.kind}_accuracy"] = e.accuracy
        evals[e.round_number][f"{e.kind}_loss"] = e.loss
        if e.kind == "central":  # the task's headline metric (accuracy for classifiers)
            evals[e.round_number]["headline"], evals[e.round_number]["central_headline"] = (
                headline_of(e.metrics, e.accuracy))
    rows = []
    for r in repo.rounds_of(s, run_id):
        row: dict[str, object] = {
            "round": r.number, "status": r.status, "attempts": r.attempts,
            "accepted": r.num_accepted, "rejected": r.num_rejected,
            "send_s": r.send_s, "wait_s": r.wait_s, "merge_s": r.merge_s,
            "evaluate_s": r.evaluate_s, "train_loss": (r.metrics or {}).get(TRAIN_LOSS),
            "round_s": (None if r.finished_at is None
                        else (r.finished_at - r.started_at).total_seconds()),  # wall clock
            "dp_epsilon": (r.metrics or {}).get(DP_EPSILON),  # user-level DP spent so far
            "bytes_down": (r.metrics or {}).get("bytes-down"),  # tensor bytes of the requests
            "bytes_up": (r.metrics or {}).get("bytes-up"),  # ... and of the replies
        }
        row.update(evals.get(r.number, {}))
        rows.append(row)
    return rows


def print_run(db: str | None, out_dir: Path, run: str) -> None:
    with _session(db, out_dir) as s:
        r = _run_or_exit(s, run)
        console.print(f"[bold]{r.name}[/bold] {r.id} — {r.status}, {r.mode}, {r.optimizer}, "
                      f"{r.combiner}" + (f"\n[red]{r.error}[/red]" if r.error else ""))
        rows = history(s, r.id)
        headline = next((str(h["headline"]) for h in rows if h.get("headline")), "accuracy")
        table = Table("round", "ok", "rej", "loss", "central", "fed", "personal", "wait s",
                      "merge ms", "round s", "eps",
                      caption=f"central: the task's {headline} on the held-out split; fed, "
                              "personal: the clients' accuracy of theta, of theta + theta_i")
        for h in rows:
            status = "" if h["status"] == "committed" else f" {h['status']}"
            merge_ms = None if h["merge_s"] is None else 1e3 * h["merge_s"]  # type: ignore[operator]
            table.add_row(
                f"{h['round']}{status}", str(h["accepted"]), str(h["rejected"]),
                _f(h.get("train_loss"), 3), _f(h.get("central_headline"), 3),
                _f(h.get("federated_accuracy"), 3), _f(h.get("personalized_accuracy"), 3),
                _f(h.get("wait_s"), 2), _f(merge_ms, 1), _f(h.get("round_s"), 2),
                _f(h.get("dp_epsilon"), 3),
            )
        console.print(table)
        rejected = [u for u in repo.updates_of(s, r.id) if not u.accepted]
        for u in rejected[:20]:
            console.print(f"round {u.round_number} node {u.node_id} rejected: {u.reason}")
        if len(rejected) > 20:
            console.print(f"... and {len(rejected) - 20} more rejected updates")
        for e in repo.events_of(s, r.id):
            console.print(f"{e.at:%H:%M:%S} {e.kind}: {e.message}")


def export_run(db: str | None, out_dir: Path, run: str, dest: Path) -> list[Path]:
    with _session(db, out_dir) as s:
        r = _run_or_exit(s, run)
        last = repo.last_committed_round(s, r.id)
        rows = history(s, r.id)
        config = dict(r.config)
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    stem = f"fedmerge-{r.id[:8]}"
    if last is not None and last.checkpoint_path and last.checkpoint_sha256:
        ck = load_checkpoint(Path(last.checkpoint_path), last.checkpoint_sha256)
        model = dest / f"{stem}-model.safetensors"
        save_file(ck.params, str(model), metadata={"run": r.id, "round": str(last.number)})
        written.append(model)
        written += task_export(config, ck.params, dest / stem)
    csv_path = dest / f"{stem}-history.csv"
    keys = sorted({k for row in rows for k in row}, key=lambda k: (k != "round", k))
    with csv_path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    json_path = dest / f"{stem}-history.json"
    json_path.write_text(json.dumps({"run": r.id, "config": config, "rounds": rows}, indent=1))
    return [*written, csv_path, json_path]


def task_export(config: dict, params: dict, directory: Path) -> list[Path]:
    """What the run's task writes in its own format (a language model's merged model
    directory, its PEFT adapter), from the final theta; nothing for a task without one."""
    from client.tasks.api import Task
    from client.tasks.registry import load_task, resolve
    from client.tasks.runtime import build_model

    name = str(config.get("task", "digits"))
    if resolve(name).export is Task.export:
        return []
    task = load_task(name, str(config.get("task-config", "")))
    return task.export(params, build_model(task, int(config.get("seed", 0))), directory)


def _f(x: object, digits: int = 4) -> str:
    return "-" if x is None else f"{float(x):.{digits}f}"  # type: ignore[arg-type]
