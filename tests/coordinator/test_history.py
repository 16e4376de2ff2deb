"""``fedmerge show`` and the dashboard read the same committed rounds: after a resume
that discarded a round, neither reports that round's figures."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy.orm import Session, sessionmaker

from coordinator.store import EvaluationRecord, RoundRecord, repo
from dashboard import queries
from fedmerge.reports import history


def _round(number: int, acc: float) -> RoundRecord:
    now = datetime.now(UTC)
    return RoundRecord(number, now, now, 0.0, 0.0, 0.0, 0.0, {"train-loss": 1.0 / number},
                       f"/ck/{number}", "0" * 64, (),
                       (EvaluationRecord("central", 1.0 - acc, acc, 10),))


def test_show_and_dashboard_report_the_same_rounds_after_a_resume(
    store: tuple[sessionmaker[Session], str],
) -> None:
    sessions, run_id = store
    with sessions.begin() as s:
        repo.add_evaluation(s, run_id, 0, EvaluationRecord("central", 2.0, 0.1, 10))
        for n, acc in ((1, 0.5), (2, 0.6), (3, 0.9)):
            repo.start_round(s, run_id, n, datetime.now(UTC))
            repo.commit_round(s, run_id, _round(n, acc))
        # a resume fell back to round 2's checkpoint (round 3's was damaged) and the
        # coordinator stopped again before redoing round 3
        repo.discard_rounds_after(s, run_id, 2)
    with sessions() as s:
        shown = {(h["round"], h.get("central_accuracy")) for h in history(s, run_id)
                 if h.get("central_accuracy") is not None}
        dashboard = {(e.round_number, e.accuracy)
                     for e in queries.evaluations(s, run_id).data if e.kind == "central"}
    assert dashboard == {(0, 0.1), (1, 0.5), (2, 0.6)}
    assert shown == {(1, 0.5), (2, 0.6)}  # history lists rounds; round 0 is not a round
    assert shown <= dashboard and (3, 0.9) not in shown
