"""``RunJournal``: every write the round loop makes to the run store, for one run.

Per round two writes: ``open_round`` marks it in flight when it starts (a coordinator
that dies mid-round leaves it 'running', and resume marks it aborted), and ``commit``
records it whole, after its checkpoint is on disk: the round row, its client updates,
its evaluations and its events, in one transaction. Each write is retried over a lost
database connection (``in_transaction``), and a commit whose acknowledgement was lost is
not written twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy.orm import Session, sessionmaker

from coordinator.store import EvaluationRecord, RetryPolicy, RoundRecord, in_transaction, repo

# How long the run's end is retried: a round's commit gives up after about 24 s of a
# database away, and the run then ends; its end must still reach the store (status,
# reason, no round left 'running'), so it waits longer, about two minutes.
FINISH_RETRY = RetryPolicy(attempts=20, first_delay_s=0.25, max_delay_s=8.0)


class RunJournal:
    def __init__(self, sessions: sessionmaker[Session], run_id: str) -> None:
        self.sessions = sessions
        self.run_id = run_id

    def open_round(self, number: int, started_at: datetime) -> None:
        in_transaction(self.sessions,
                       lambda s: repo.start_round(s, self.run_id, number, started_at),
                       what=f"round {number} start")

    def commit(self, record: RoundRecord, events: Sequence[tuple[str, str]] = ()) -> None:
        """The round, whole; ``events``: (kind, message) pairs recorded with it."""
        def commit(s: Session) -> None:
            repo.commit_round(s, self.run_id, record)
            for kind, message in events:
                repo.add_event(s, self.run_id, kind, message)

        in_transaction(self.sessions, commit, what=f"round {record.number} commit",
                       done=lambda s: repo.round_is_committed(s, self.run_id, record))

    def finished(self, number: int, finished_at: datetime) -> None:
        """A committed round's end time, after its commit (a one-column update)."""
        in_transaction(self.sessions,
                       lambda s: repo.set_round_finished(s, self.run_id, number, finished_at),
                       what=f"round {number} end time")

    def client_evaluations(self, number: int, records: Sequence[EvaluationRecord],
                           events: Sequence[tuple[str, str]] = ()) -> None:
        """The clients' evaluations of round ``number``'s theta, made after its commit
        (in place of any recorded before), with ``events``."""
        def write(s: Session) -> None:
            repo.replace_client_evaluations(s, self.run_id, number, records)
            for kind, message in events:
                repo.add_event(s, self.run_id, kind, message)

        in_transaction(self.sessions, write, what=f"round {number} client evaluation")

    def has_client_evaluation(self, number: int) -> bool:
        with self.sessions() as s:
            return repo.has_client_evaluation(s, self.run_id, number)

    def initial(self, evaluation: EvaluationRecord) -> None:
        """The initial model's evaluation, as round 0."""
        with self.sessions.begin() as s:
            repo.add_evaluation(s, self.run_id, 0, evaluation)

    def event(self, kind: str, message: str) -> None:
        with self.sessions.begin() as s:
            repo.add_event(s, self.run_id, kind, message)

    def finish(self, status: str, error: str | None = None) -> None:
        """The run's end; a run that did not complete has no round left in flight (its
        round was never committed: say so, rather than leave it 'running')."""

        def finish(s: Session) -> None:
            if status != "completed":
                repo.abort_inflight_rounds(s, self.run_id)
            repo.finish_run(s, self.run_id, status, error=error)

        in_transaction(self.sessions, finish, what=f"run {self.run_id} {status}",
                       policy=FINISH_RETRY)
