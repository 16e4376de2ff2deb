"""The JSON API: the same ``queries`` the pages use, as ``schemas`` response models."""

from __future__ import annotations

from fastapi import APIRouter

from dashboard import queries
from dashboard.deps import SessionDep
from dashboard.schemas import (
    ClientsPublic,
    EvaluationsPublic,
    RoundsPublic,
    RunDetailPublic,
    RunsPublic,
)

NOT_FOUND = {404: {"description": "No run has this id (or the prefix is ambiguous)"}}

router = APIRouter(prefix="/api", tags=["runs"])


@router.get("/runs", response_model=RunsPublic)
def read_runs(session: SessionDep) -> RunsPublic:
    """Every run, newest first."""
    return queries.list_runs(session)


@router.get("/runs/{run_id}", response_model=RunDetailPublic, responses=NOT_FOUND)
def read_run(session: SessionDep, run_id: str) -> RunDetailPublic:
    """One run (by id or unique id prefix): its summary, config, events and checkpoints."""
    return queries.run_detail(session, run_id)


@router.get("/runs/{run_id}/rounds", response_model=RoundsPublic, responses=NOT_FOUND)
def read_rounds(session: SessionDep, run_id: str) -> RoundsPublic:
    """Every round of the run, aborted attempts included, with its timings."""
    return queries.rounds(session, run_id)


@router.get("/runs/{run_id}/clients", response_model=ClientsPublic, responses=NOT_FOUND)
def read_clients(session: SessionDep, run_id: str) -> ClientsPublic:
    """Each node over the committed rounds: participation, acceptance, offset norms."""
    return queries.clients(session, run_id)


@router.get(
    "/runs/{run_id}/evaluations", response_model=EvaluationsPublic, responses=NOT_FOUND
)
def read_evaluations(session: SessionDep, run_id: str) -> EvaluationsPublic:
    """Central, federated and personalized evaluations; round 0 is the initial model."""
    return queries.evaluations(session, run_id)
