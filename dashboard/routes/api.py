"""The JSON API: the same ``queries`` the pages use, as ``schemas`` response models.

Everything is a read except ``PUT /api/runs/{id}/annotations`` (a run's tags and notes),
which needs a dashboard started with a token: the token gate has already checked it.
"""

from __future__ import annotations

import csv
import io
from datetime import date
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response

from coordinator.store import repo
from dashboard import drilldown, queries
from dashboard.deps import SessionDep, WriterDep
from dashboard.schemas import (
    AnnotationsIn,
    ClientDetailPublic,
    ClientsPublic,
    ComparisonPublic,
    EvaluationsPublic,
    RoundDetailPublic,
    RoundsPublic,
    RunDetailPublic,
    RunsPublic,
)

NOT_FOUND = {404: {"description": "No run has this id (or the prefix is ambiguous)"}}

router = APIRouter(prefix="/api", tags=["runs"])


SORT_PATTERN = "^(" + "|".join(queries.SORT_KEYS) + ")$"


def run_query(
    q: str = "", status: str = "", task: str = "", optimizer: str = "", combiner: str = "",
    since: date | None = None, until: date | None = None,
    sort: Annotated[str, Query(pattern=SORT_PATTERN)] = "started_at",
    order: Annotated[str, Query(pattern="^(asc|desc)$")] = "desc",
    page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
    per_page: Annotated[int, Query(ge=1, le=500)] = 25,
) -> queries.RunQuery:
    """The runs list's query parameters (pages and ``/api/runs`` share them)."""
    return queries.RunQuery(
        q=q.strip(), status=status, task=task.strip(), optimizer=optimizer,
        combiner=combiner, since=since, until=until, sort=sort, desc=order == "desc",
        page=page, per_page=per_page,
    )


RunQueryDep = Annotated[queries.RunQuery, Depends(run_query)]


@router.get("/ping")
def ping() -> dict[str, str]:
    """Whether the dashboard is up (pages poll it to say when it has stopped); no store read."""
    return {"status": "ok"}


@router.get("/runs", response_model=RunsPublic)
def read_runs(session: SessionDep, query: RunQueryDep) -> RunsPublic:
    """Runs, newest first, 25 a page; ``q`` (name, id, tags, notes), ``status``, ``task``,
    ``optimizer``, ``combiner``, ``since``, ``until`` filter; ``sort``/``order`` order."""
    return queries.list_runs(session, query)


@router.get("/compare", response_model=ComparisonPublic, responses=NOT_FOUND)
def read_comparison(
    session: SessionDep, runs: Annotated[list[str], Query(min_length=1, max_length=12)]
) -> ComparisonPublic:
    """Runs side by side (``?runs=a&runs=b``): details and the config keys that differ."""
    return drilldown.compare(session, runs)


@router.get("/runs/{run_id}", response_model=RunDetailPublic, responses=NOT_FOUND)
def read_run(session: SessionDep, run_id: str) -> RunDetailPublic:
    """One run (by id or unique id prefix): its summary, config, events and checkpoints."""
    return queries.run_detail(session, run_id)


@router.put("/runs/{run_id}/annotations", response_model=RunDetailPublic, responses=NOT_FOUND)
def write_annotations(
    request: Request, writer: WriterDep, run_id: str, body: AnnotationsIn
) -> RunDetailPublic:
    """Replace the run's tags and notes. Only a dashboard started with a token writes."""
    if request.app.state.settings.token is None:
        raise HTTPException(403, "annotations are written only by a dashboard started with "
                                 "a token ($FEDMERGE_DASHBOARD_TOKEN)")
    try:
        tags = body.clean_tags()
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from exc
    run = queries.find_run(writer, run_id)
    repo.annotate_run(writer, run.id, tags=tags, notes=body.notes)
    writer.flush()
    return queries.run_detail(writer, run.id)


@router.get("/runs/{run_id}/rounds", response_model=RoundsPublic, responses=NOT_FOUND)
def read_rounds(session: SessionDep, run_id: str) -> RoundsPublic:
    """Every round of the run, aborted attempts included, with its timings."""
    return queries.rounds(session, run_id)


@router.get("/runs/{run_id}/rounds/{number:int}", response_model=RoundDetailPublic,
            responses=NOT_FOUND)
def read_round(session: SessionDep, run_id: str, number: int) -> RoundDetailPublic:
    """One round: which updates were merged or dropped, and why."""
    return drilldown.round_detail(session, run_id, number)


@router.get("/runs/{run_id}/clients", response_model=ClientsPublic, responses=NOT_FOUND)
def read_clients(session: SessionDep, run_id: str) -> ClientsPublic:
    """Each node over the committed rounds: participation, acceptance, offset norms."""
    return queries.clients(session, run_id)


@router.get("/runs/{run_id}/clients/{node_id}", response_model=ClientDetailPublic,
            responses=NOT_FOUND)
def read_client(session: SessionDep, run_id: str, node_id: str) -> ClientDetailPublic:
    """One node's update in each committed round: metrics, offset norm, verdict, reason."""
    return drilldown.client_detail(session, run_id, node_id)


@router.get(
    "/runs/{run_id}/evaluations", response_model=EvaluationsPublic, responses=NOT_FOUND
)
def read_evaluations(session: SessionDep, run_id: str) -> EvaluationsPublic:
    """Central, federated and personalized evaluations; round 0 is the initial model."""
    return queries.evaluations(session, run_id)


@router.get("/runs/{run_id}/metrics.{fmt}", responses=NOT_FOUND)
def download_metrics(session: SessionDep, run_id: str, fmt: str) -> Response:
    """Per-round metrics (timings, round metrics, evaluations) as a CSV or JSON file."""
    if fmt not in ("csv", "json"):
        raise HTTPException(404, f"no metrics.{fmt}; use metrics.csv or metrics.json")
    run = queries.find_run(session, run_id)
    rows = drilldown.metrics_table(session, run.id)
    name = f"fedmerge-{run.id[:8]}-metrics.{fmt}"
    headers = {"Content-Disposition": f'attachment; filename="{name}"'}
    if fmt == "json":
        return JSONResponse(rows, headers=headers)
    columns = list(dict.fromkeys(
        [*drilldown.METRIC_COLUMNS, *(k for row in rows for k in row)]))
    out = io.StringIO()
    writer = csv.DictWriter(out, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return Response(out.getvalue(), media_type="text/csv", headers=headers)
