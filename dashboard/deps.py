"""Typed dependencies, named once so route signatures explain themselves."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.templating import Jinja2Templates
from sqlalchemy.orm import Session, sessionmaker


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
    factory: sessionmaker[Session] | None = getattr(request.app.state, "writer_factory", None)
    if factory is None:
        from coordinator.store import make_engine, make_session_factory

        engine = make_engine(request.app.state.settings.db_url)
        request.app.state.writer_engine = engine
        factory = request.app.state.writer_factory = make_session_factory(engine)
    with factory.begin() as session:
        yield session


WriterDep = Annotated[Session, Depends(get_writer)]
