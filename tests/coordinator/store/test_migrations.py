"""coordinator/store/migrations: upgrades keep data, match the models, refuse foreign DBs."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import JSON, Boolean, DateTime, Engine, bindparam, inspect, text

from coordinator.store import (
    StoreError,
    UnmanagedDatabase,
    current_revision,
    make_engine,
    make_session_factory,
    repo,
    upgrade_to,
    upgrade_to_head,
)
from coordinator.store.db import alembic_config
from coordinator.store.models import Base

FIRST, HEAD = "0001", "0003_i19_dash"
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


def insert_at_first_revision(engine: Engine) -> None:
    """Rows as a fedmerge at revision 0001 wrote them, in plain SQL."""
    params = (
        bindparam("t", type_=DateTime(timezone=True)),
        bindparam("j", type_=JSON()),
        bindparam("ok", type_=Boolean()),
    )
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO runs (id, name, config, mode, optimizer, combiner, status,"
                " num_rounds_planned, started_at, out_dir)"
                " VALUES ('r1', 'old run', :j, 'global', 'sgd', 'mean', 'interrupted', 5, :t,"
                " '/tmp/old')"
            ).bindparams(*params[:2]),
            {"j": {"lr": 1.0}, "t": T0},
        )
        conn.execute(
            text(
                "INSERT INTO rounds (run_id, number, status, started_at, num_clients, metrics,"
                " checkpoint_sha256) VALUES ('r1', 1, 'committed', :t, 2, :j, 'ff')"
            ).bindparams(*params[:2]),
            {"t": T0, "j": {"train_loss": 0.5}},
        )
        conn.execute(
            text(
                "INSERT INTO client_updates (run_id, round_number, node_id, metrics, accepted,"
                " reason) VALUES ('r1', 1, '18446744073709551615', :j, :ok, 'too large')"
            ).bindparams(params[1], params[2]),
            {"j": {}, "ok": False},
        )
        conn.execute(
            text(
                "INSERT INTO evaluations (run_id, round_number, kind, loss, metrics)"
                " VALUES ('r1', 1, 'central', 0.25, :j)"
            ).bindparams(params[1]),
            {"j": {}},
        )


def test_revisions_form_one_line_from_first_to_head() -> None:
    script = ScriptDirectory.from_config(alembic_config())
    assert script.get_heads() == [HEAD]
    chain = [rev.revision for rev in script.walk_revisions()]  # head first
    assert chain == [HEAD, "0002", FIRST]
    assert Path(script.dir).is_absolute() and (Path(script.dir) / "env.py").exists()


def test_upgrade_from_first_revision_keeps_rows(engine: Engine) -> None:
    upgrade_to(engine, FIRST)
    assert current_revision(engine) == FIRST
    assert "run_events" not in inspect(engine).get_table_names()
    insert_at_first_revision(engine)

    upgrade_to_head(engine)

    assert current_revision(engine) == HEAD
    insp = inspect(engine)
    assert "run_events" in insp.get_table_names()
    assert "attempts" in {c["name"] for c in insp.get_columns("rounds")}
    factory = make_session_factory(engine)
    with factory.begin() as s:
        run = repo.get_run(s, "r1")
        (round1,) = repo.rounds_of(s, "r1")
        (update,) = repo.updates_of(s, "r1")
        (evaluation,) = repo.evaluations_of(s, "r1")
    assert run is not None and (run.name, run.status, run.config) == (
        "old run",
        "interrupted",
        {"lr": 1.0},
    )
    assert run.started_at == T0
    assert (round1.status, round1.attempts, round1.metrics) == ("committed", 1, {"train_loss": 0.5})
    assert (update.node_id, update.accepted, update.reason) == (
        "18446744073709551615",
        False,
        "too large",
    )
    assert (evaluation.kind, evaluation.loss) == ("central", 0.25)

    with factory.begin() as s:  # the new table is usable on the migrated database
        repo.mark_resumed(s, "r1")
    with factory.begin() as s:
        assert [e.kind for e in repo.events_of(s, "r1")] == ["resumed"]


def test_upgrade_to_head_twice_is_a_no_op(engine: Engine) -> None:
    upgrade_to(engine, FIRST)
    insert_at_first_revision(engine)
    upgrade_to_head(engine)
    upgrade_to_head(engine)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM runs")).scalar() == 1
        assert conn.execute(text("SELECT count(*) FROM rounds")).scalar() == 1


def test_migrations_build_exactly_the_models(engine: Engine) -> None:
    upgrade_to_head(engine)
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(context, Base.metadata)
    assert diff == [], f"models and migrations disagree: {diff}"


def test_database_with_tables_but_no_alembic_version_is_refused(
    engine: Engine, db_url: str
) -> None:
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE someone_elses (id INTEGER PRIMARY KEY, v TEXT)"))
        conn.execute(text("INSERT INTO someone_elses (id, v) VALUES (1, 'keep me')"))

    with pytest.raises(UnmanagedDatabase) as info:
        upgrade_to_head(engine)

    message = str(info.value)
    assert db_url.split("/")[-1] in message and "someone_elses" in message
    assert "alembic_version" in message
    tables = inspect(engine).get_table_names()
    assert tables == ["someone_elses"]  # nothing created, nothing dropped
    with engine.connect() as conn:
        assert conn.execute(text("SELECT v FROM someone_elses")).scalar() == "keep me"


def test_database_from_a_newer_fedmerge_is_an_error(engine: Engine) -> None:
    upgrade_to_head(engine)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(StoreError, match="cannot migrate .*9999"):
        upgrade_to_head(engine)
    assert "runs" in inspect(engine).get_table_names()


def test_sqlite_ddl_rolls_back_so_a_failed_migration_leaves_no_trace(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    try:
        with pytest.raises(RuntimeError, match="midway"), engine.begin() as conn:
            conn.execute(text("CREATE TABLE half_done (id INTEGER)"))
            raise RuntimeError("migration failed midway")
        assert inspect(engine).get_table_names() == []
    finally:
        engine.dispose()


def test_sqlite_foreign_keys_are_back_on_after_migrating(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    try:
        upgrade_to_head(engine)  # turns them off while it runs, on the pooled connection
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    finally:
        engine.dispose()
