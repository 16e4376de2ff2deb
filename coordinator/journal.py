"""``RunJournal``: every write the round loop makes to the run store, for one run.

Per round two writes: ``open_round`` marks it in flight when it starts (a coordinator
that dies mid-round leaves it 'running', and resume marks it aborted), and ``commit``
records it whole, after its checkpoint is on disk: the round row, its client updates,
its evaluations and its events, in one transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy.orm import Session, sessionmaker

from coordinator.store import EvaluationRecord, RoundRecord, repo


class RunJournal:
    def __init__(self, sessions: sessionmaker[Session], run_id: str) -> None:
        self.sessions = sessions
        self.run_id = run_id

    def open_round(self, number: int, started_at: datetime) -> None:
        with self.sessions.begin() as s:
            repo.start_round(s, self.run_id, number, started_at)

    def commit(self, record: RoundRecord, events: Sequence[tuple[str, str]] = ()) -> None:
        """The round, whole; ``events``: (kind, message) pairs recorded with it."""
        with self.sessions.begin() as s:
            repo.commit_round(s, self.run_id, record)
            for kind, message in events:
                repo.add_event(s, self.run_id, kind, message)

    def initial(self, evaluation: EvaluationRecord) -> None:
        """The initial model's evaluation, as round 0."""
        with self.sessions.begin() as s:
            repo.add_evaluation(s, self.run_id, 0, evaluation)

    def event(self, kind: str, message: str) -> None:
        with self.sessions.begin() as s:
            repo.add_event(s, self.run_id, kind, message)

    def finish(self, status: str, error: str | None = None) -> None:
        with self.sessions.begin() as s:
            repo.finish_run(s, self.run_id, status, error=error)
