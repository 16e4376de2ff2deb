"""The HTML pages, the plot SVGs and checkpoint downloads, from the same ``queries`` as the API."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, Response

from dashboard import drilldown, plots, queries
from dashboard.deps import SessionDep, TemplatesDep
from dashboard.routes.api import RunQueryDep
from dashboard.schemas import EvaluationPublic, RoundPublic

SVG = "image/svg+xml"
NO_STORE = {"Cache-Control": "no-store"}

router = APIRouter(tags=["pages"], include_in_schema=False, default_response_class=HTMLResponse)


def _svg(
    name: str, evals: list[EvaluationPublic], rounds: list[RoundPublic], unit: str = "round"
) -> str:
    if name == "durations":
        return plots.durations_svg(rounds, unit)
    return plots.accuracy_svg(evals, unit) if name == "accuracy" else plots.loss_svg(evals, unit)


def _by_round(evals: list[EvaluationPublic]) -> dict[int, dict[str, EvaluationPublic]]:
    table: dict[int, dict[str, EvaluationPublic]] = {}
    for e in evals:
        table.setdefault(e.round_number, {})[e.kind] = e
    return table


@router.get("/")
def runs_page(
    request: Request, session: SessionDep, templates: TemplatesDep, query: RunQueryDep
) -> Response:
    return templates.TemplateResponse(
        request=request,
        name="runs.html",
        context={
            "listing": queries.list_runs(session, query),
            "query": query,
            "choices": queries.filter_choices(session),
            "sort_keys": queries.SORT_KEYS,
        },
        headers=NO_STORE,
    )


@router.get("/compare")
def compare_page(
    request: Request, session: SessionDep, templates: TemplatesDep,
    runs: Annotated[list[str], Query(max_length=12)] = [],  # noqa: B006 - FastAPI copies it
) -> Response:
    if len(runs) < 1:
        raise HTTPException(404, "Select runs on the runs list to compare them.")
    return templates.TemplateResponse(
        request=request, name="compare.html",
        context={"cmp": drilldown.compare(session, runs)}, headers=NO_STORE,
    )


@router.get("/compare/plots/accuracy-time.svg", response_class=Response)
def compare_accuracy_time(
    session: SessionDep,
    runs: Annotated[list[str], Query(max_length=12)] = [],  # noqa: B006 - FastAPI copies it
) -> Response:
    if len(runs) < 1:
        raise HTTPException(404, "Name the runs to overlay: ?runs=<id>&runs=<id>.")
    svg = plots.compare_accuracy_time_svg(queries.accuracy_over_time_of(session, runs))
    return Response(svg, media_type=SVG, headers=NO_STORE)


@router.get("/runs/{run_id}/clients/{node_id}")
def client_page(
    request: Request, session: SessionDep, templates: TemplatesDep, run_id: str, node_id: str
) -> Response:
    run = queries.run_detail(session, run_id)
    client = drilldown.client_detail(session, run.id, node_id)
    metric_keys = sorted({k for u in client.rounds for k, v in u.metrics.items()
                          if isinstance(v, int | float) and not isinstance(v, bool)})
    return templates.TemplateResponse(
        request=request, name="client.html",
        context={"run": run, "client": client, "metric_keys": metric_keys},
        headers=NO_STORE,
    )


@router.get("/runs/{run_id}/rounds/{number:int}")
def round_page(
    request: Request, session: SessionDep, templates: TemplatesDep, run_id: str, number: int
) -> Response:
    run = queries.run_detail(session, run_id)
    return templates.TemplateResponse(
        request=request, name="round.html",
        context={"run": run, "detail": drilldown.round_detail(session, run.id, number)},
        headers=NO_STORE,
    )


@router.get("/runs/{run_id}")
def run_page(
    request: Request, session: SessionDep, templates: TemplatesDep, run_id: str
) -> Response:
    run = queries.run_detail(session, run_id)
    evals = queries.evaluations(session, run.id).data
    rounds = queries.rounds(session, run.id).data
    return templates.TemplateResponse(
        request=request,
        name="run.html",
        context={
            "run": run,
            "rounds": rounds,
            "clients": queries.clients(session, run.id).data,
            "evals": _by_round(evals),
            "can_write": request.app.state.settings.token is not None,
        },
        headers=NO_STORE,
    )


@router.get("/runs/{run_id}/plots/{name}.svg", response_class=Response)
def plot_svg(session: SessionDep, run_id: str, name: str) -> Response:
    if name not in plots.PLOT_NAMES:
        raise HTTPException(404, f"no plot {name!r}; plots are {', '.join(plots.PLOT_NAMES)}")
    run = queries.find_run(session, run_id)
    if name == "accuracy-time":
        svg = plots.accuracy_time_svg(queries.accuracy_over_time(session, run.id))
        return Response(svg, media_type=SVG, headers=NO_STORE)
    if name == "durations":  # read only what this plot draws
        evals, rounds = [], queries.rounds(session, run.id).data
    else:
        evals, rounds = queries.evaluations(session, run.id).data, []
    unit = queries.step_unit(dict(run.config))
    return Response(_svg(name, evals, rounds, unit), media_type=SVG, headers=NO_STORE)


@router.get("/runs/{run_id}/checkpoints/{number:int}.safetensors", response_class=FileResponse)
def checkpoint(session: SessionDep, run_id: str, number: int) -> FileResponse:
    run = queries.find_run(session, run_id)
    path = queries.checkpoint_file(session, run.id, number)
    return FileResponse(
        path,
        media_type="application/octet-stream",
        filename=f"fedmerge-{run.id[:8]}-round{number}.safetensors",
    )
