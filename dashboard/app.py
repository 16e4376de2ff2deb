"""``create_app(settings)``: assembles the routers, the token gate and the error pages.

Nothing runs at import: the read-only engine is made in the lifespan and disposed after.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException

from coordinator.store import StoreError, make_session_factory, ping
from dashboard.auth import TokenGate, wants_json
from dashboard.cache import AnswerCache
from dashboard.db import make_readonly_engine, unavailable_reason
from dashboard.queries import UnknownCheckpoint, UnknownClient, UnknownRun, store_stamp
from dashboard.routes import api, pages
from dashboard.security import HostGuard, SecurityHeaders, allowed_hosts
from dashboard.settings import DashboardSettings
from dashboard.templating import STATIC_DIR, make_templates

log = logging.getLogger("dashboard")
RETRY_AFTER_S = 2


def create_app(settings: DashboardSettings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # The dashboard may start before the coordinator creates the store (``fedmerge
        # demo`` does): it serves 503 pages that retry until the store can be read.
        engine = make_readonly_engine(settings.db_url, check=False)
        try:
            ping(engine)
        except StoreError as exc:
            reason = unavailable_reason(settings.db_url, exc)
            log.warning("%s; pages answer 503 until it can", reason)
        app.state.session_factory = make_session_factory(engine)
        try:
            yield
        finally:
            engine.dispose()
            if (writer := getattr(app.state, "writer_engine", None)) is not None:
                writer.dispose()

    app = FastAPI(
        title="fedmerge dashboard",
        summary="fedmerge's run store: runs, rounds, clients, evaluations (and run notes).",
        lifespan=lifespan,
        docs_url=None,  # Swagger UI and ReDoc load their code from a CDN
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.templates = make_templates()
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.include_router(pages.router)
    app.include_router(api.router)
    _add_error_pages(app)
    app.add_middleware(AnswerCache, stamp=lambda scope: _store_stamp(app),
                       stamp_max_age_s=settings.poll_cache_s)
    if settings.token is not None:
        app.add_middleware(
            TokenGate, token=settings.token, refuse_html=lambda r: error_page(r, 401)
        )
    if (hosts := allowed_hosts(settings)) is not None:
        app.add_middleware(HostGuard, allowed=hosts)
    app.add_middleware(SecurityHeaders)  # outermost: every answer carries the headers
    return app


def _store_stamp(app: FastAPI) -> tuple[object, ...]:
    """The store's state, read with the app's own read-only engine (AttributeError before
    the lifespan made it: nothing is cached then)."""
    with app.state.session_factory() as session:
        try:
            return store_stamp(session)
        finally:
            session.rollback()


def error_page(request: Request, status: int, detail: str | None = None) -> Response:
    """The small HTML page (or JSON, for /api and JSON clients) for an error status."""
    phrase = HTTPStatus(status).phrase
    message = detail or {
        401: "This dashboard needs its access token: open it with ?token=<token>.",
        404: "Nothing here.",
    }.get(status, phrase)
    if wants_json(request.scope):
        return JSONResponse({"detail": message}, status)
    templates = request.app.state.templates
    return templates.TemplateResponse(
        request=request,
        name="error.html",
        context={"status": status, "phrase": phrase, "message": message,
                 "retry_after": RETRY_AFTER_S if status == 503 else None},
        status_code=status,
    )


def _add_error_pages(app: FastAPI) -> None:
    async def not_found(request: Request, exc: Exception) -> Response:
        return error_page(request, 404, str(exc))

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        response = error_page(request, exc.status_code, exc.detail)
        response.headers.update(exc.headers or {})
        return response

    async def store_error(request: Request, exc: Exception) -> Response:
        reason = unavailable_reason(request.app.state.settings.db_url, exc)
        log.warning("%s %s: %s", request.method, request.url.path, reason)
        response = error_page(request, 503, f"{reason[0].upper()}{reason[1:]}. Retrying…")
        response.headers["Retry-After"] = str(RETRY_AFTER_S)
        return response

    app.add_exception_handler(UnknownRun, not_found)
    app.add_exception_handler(UnknownCheckpoint, not_found)
    app.add_exception_handler(UnknownClient, not_found)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(SQLAlchemyError, store_error)
    app.add_exception_handler(StoreError, store_error)
