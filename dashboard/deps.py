"""Typed dependencies, named once so route signatures explain themselves."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.templating import Jinja2Templates
from sqlalchemy.orm import Session, sessionmaker

from coordinator.store import make_engine, make_session_factory

_WRITER_LOCK = threading.Lock()


def get_session(request: Request) -> Iterator[Session]:
    """A read-only unit of work: never committed, always rolled back, so it holds no lock."""
    factory: sessionmaker[Session] = request.app.state.session_factory
    with factory() as session:
        try:
            yield session
        finally:
            session.rollback()


SessionDep = Annotated[Session, Depends(get_session)]


def get_templates(request: Request) -> Jinja2Templates:
    templates: Jinja2Templates = request.app.state.templates
    return templates


TemplatesDep = Annotated[Jinja2Templates, Depends(get_templates)]


def get_writer(request: Request) -> Iterator[Session]:
    """The dashboard's only writable unit of work (annotations), on its own engine.

    Made on first use, so a read-only deployment never opens the store for writing;
    committed when the route returns, rolled back if it raises.
    """
    state = request.app.state
    with _WRITER_LOCK:  # two first writes at once must not make two engines
        factory: sessionmaker[Session] | None = getattr(state, "writer_factory", None)
        if factory is None:
            engine = state.writer_engine = make_engine(state.settings.db_url)
            factory = state.writer_factory = make_session_factory(engine)
    with factory.begin() as session:
        yield session


WriterDep = Annotated[Session, Depends(get_writer)]
