"""The JSON API over the database of a real simulated federation: counts match the DB."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import distinct, func, select
from sqlalchemy.orm import Session

from coordinator.store.models import ClientUpdateRow, EvaluationRow, RoundRow, RunRow
from tests.dashboard.conftest import RealRun

ENDPOINTS = ("", "/rounds", "/clients", "/evaluations")


def _count(s: Session, column: object, *where: object) -> int:
    return s.scalar(select(func.count(column)).where(*where)) or 0  # type: ignore[arg-type]


def test_runs_lists_the_real_run(real_client: TestClient, real_run: RealRun) -> None:
    body = real_client.get("/api/runs").json()
    assert body["count"] == len(body["data"]) >= 1
    (run,) = [r for r in body["data"] if r["id"] == real_run.run_id]
    assert run["short_id"] == real_run.run_id[:8]
    assert run["status"] == "completed"
    assert (run["rounds_done"], run["rounds_planned"]) == (3, 3)
    assert run["num_clients"] == 3
    assert (run["mode"], run["optimizer"], run["combiner"]) == ("global", "adam", "mean")


def test_run_detail_matches_the_db(
    real_client: TestClient, real_run: RealRun, real_session: Session
) -> None:
    body = real_client.get(f"/api/runs/{real_run.run_id}").json()
    row = real_session.get(RunRow, real_run.run_id)
    assert row is not None
    assert body["config"] == row.config
    assert body["name"] == row.name == "digits-adam-3"
    best = real_session.scalar(
        select(func.max(EvaluationRow.accuracy)).where(
            EvaluationRow.run_id == real_run.run_id, EvaluationRow.kind == "central"
        )
    )
    assert body["best_central_accuracy"] == pytest.approx(best)
    digests = real_session.scalars(
        select(RoundRow.checkpoint_sha256)
        .where(RoundRow.run_id == real_run.run_id)
        .order_by(RoundRow.number)
    ).all()
    assert [c["sha256"] for c in body["checkpoints"]] == list(digests)
    assert all(c["available"] for c in body["checkpoints"])


def test_rounds_match_the_db(
    real_client: TestClient, real_run: RealRun, real_session: Session
) -> None:
    body = real_client.get(f"/api/runs/{real_run.run_id}/rounds").json()
    assert body["count"] == _count(real_session, RoundRow.id, RoundRow.run_id == real_run.run_id)
    assert [r["number"] for r in body["data"]] == [1, 2, 3]
    for r in body["data"]:
        assert r["status"] == "committed"
        assert r["num_accepted"] == 3 and r["num_rejected"] == 0
        assert r["duration_s"] > 0
        assert all(r[f"{phase}_s"] is not None for phase in ("send", "wait", "merge", "evaluate"))


def test_clients_match_the_db(
    real_client: TestClient, real_run: RealRun, real_session: Session
) -> None:
    body = real_client.get(f"/api/runs/{real_run.run_id}/clients").json()
    mine = ClientUpdateRow.run_id == real_run.run_id
    assert body["count"] == _count(real_session, distinct(ClientUpdateRow.node_id), mine) == 3
    updates = _count(real_session, ClientUpdateRow.id, mine)
    assert sum(c["accepted"] + c["rejected"] for c in body["data"]) == updates == 9
    assert sorted(c["partition_id"] for c in body["data"]) == [0, 1, 2]
    for c in body["data"]:
        assert c["rounds_participated"] == 3
        assert c["num_examples"] > 0 and c["mean_offset_norm"] > 0
        assert c["rejections"] == []


def test_evaluations_match_the_db(
    real_client: TestClient, real_run: RealRun, real_session: Session
) -> None:
    body = real_client.get(f"/api/runs/{real_run.run_id}/evaluations").json()
    assert body["count"] == _count(
        real_session, EvaluationRow.id, EvaluationRow.run_id == real_run.run_id
    )
    central = [e["round_number"] for e in body["data"] if e["kind"] == "central"]
    assert central == [0, 1, 2, 3]  # round 0: the initial model
    assert {e["kind"] for e in body["data"]} >= {"central", "federated"}


def test_a_unique_id_prefix_finds_the_run(real_client: TestClient, real_run: RealRun) -> None:
    body = real_client.get(f"/api/runs/{real_run.run_id[:8]}").json()
    assert body["id"] == real_run.run_id


@pytest.mark.parametrize("suffix", ENDPOINTS)
def test_unknown_run_is_a_json_404(real_client: TestClient, suffix: str) -> None:
    response = real_client.get(f"/api/runs/0123456789abcdef{suffix}")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    assert "0123456789abcdef" in response.json()["detail"]


READS = ("", "/rounds", "/rounds/{number}", "/clients", "/clients/{node_id}", "/evaluations",
         "/metrics.{fmt}")


def test_openapi_documents_the_api_whose_only_write_is_annotations(
    real_client: TestClient,
) -> None:
    paths = real_client.get("/openapi.json").json()["paths"]
    assert set(paths) == {
        "/api/runs", "/api/ping", "/api/compare", "/api/runs/{run_id}/annotations",
        *(f"/api/runs/{{run_id}}{s}" for s in READS),
    }
    writes = {path for path, methods in paths.items() if set(methods) != {"get"}}
    assert writes == {"/api/runs/{run_id}/annotations"}
    assert set(paths["/api/runs/{run_id}/annotations"]) == {"put"}
