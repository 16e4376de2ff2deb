"""The run store's schema: typed SQLAlchemy 2 ORM classes.

Migrations in ``migrations/versions`` build exactly this schema (a test compares
them); change both together. No torch or flwr here: the dashboard imports it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    CheckConstraint,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from coordinator.store.records import EVALUATION_KINDS, ROUND_STATUSES, RUN_STATUSES

# Stable constraint names, so batch migrations on SQLite can find and alter them.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in and out on every backend.

    SQLite keeps no offset and PostgreSQL answers in the session's time zone, so both
    directions normalise to UTC; naive datetimes are refused because their zone is a guess.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: pass a timezone-aware one (UTC)")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:  # SQLite: stored as UTC without an offset
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON()}


def _run_fk() -> Mapped[str]:
    return mapped_column(String(36), ForeignKey("runs.id", ondelete="CASCADE"))


def _one_of(column: str, values: tuple[str, ...]) -> str:
    """A CHECK clause; the migrations spell theirs out, as they were when written."""
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class RunRow(Base):
    __tablename__ = "runs"
    __table_args__ = (
        CheckConstraint(_one_of("status", RUN_STATUSES), name="status"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)  # uuid4 hex
    name: Mapped[str] = mapped_column(String(255))
    config: Mapped[dict[str, Any]]
    mode: Mapped[str] = mapped_column(String(32))
    optimizer: Mapped[str] = mapped_column(String(32))
    combiner: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))
    num_rounds_planned: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]
    error: Mapped[str | None] = mapped_column(Text)
    flower_run_id: Mapped[str | None] = mapped_column(String(32))  # uint64 as text
    out_dir: Mapped[str] = mapped_column(Text)  # where this run's checkpoints live
    # Added by revision 0003_i19_dash: the dashboard's annotations, its only writes.
    tags: Mapped[list[str]] = mapped_column(JSON, default=list, server_default=text("'[]'"))
    notes: Mapped[str] = mapped_column(Text, default="", server_default=text("''"))


class RoundRow(Base):
    __tablename__ = "rounds"
    __table_args__ = (
        UniqueConstraint("run_id", "number"),
        CheckConstraint(_one_of("status", ROUND_STATUSES), name="status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[str] = _run_fk()
    number: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]
    send_s: Mapped[float | None] = mapped_column(Float)
    wait_s: Mapped[float | None] = mapped_column(Float)
    merge_s: Mapped[float | None] = mapped_column(Float)
    evaluate_s: Mapped[float | None] = mapped_column(Float)
    num_clients: Mapped[int | None] = mapped_column(Integer)
    num_accepted: Mapped[int | None] = mapped_column(Integer)
    num_rejected: Mapped[int | None] = mapped_column(Integer)
    metrics: Mapped[dict[str, Any] | None]
    checkpoint_path: Mapped[str | None] = mapped_column(Text)
    checkpoint_sha256: Mapped[str | None] = mapped_column(String(64))
    # Added by revision 0002; the server default fills rows written before it.
    attempts: Mapped[int] = mapped_column(Integer, default=1, server_default=text("1"))


class ClientUpdateRow(Base):
    __tablename__ = "client_updates"
    __table_args__ = (Index(None, "run_id", "round_number"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[str] = _run_fk()
    round_number: Mapped[int] = mapped_column(Integer)
    node_id: Mapped[str] = mapped_column(String(32))  # uint64 as text
    partition_id: Mapped[int | None] = mapped_column(Integer)
    num_examples: Mapped[int | None] = mapped_column(Integer)
    offset_norm: Mapped[float | None] = mapped_column(Float)
    metrics: Mapped[dict[str, Any]]
    accepted: Mapped[bool]
    reason: Mapped[str | None] = mapped_column(Text)
    train_seconds: Mapped[float | None] = mapped_column(Float)


class EvaluationRow(Base):
    __tablename__ = "evaluations"
    __table_args__ = (
        Index(None, "run_id", "round_number"),
        CheckConstraint(_one_of("kind", EVALUATION_KINDS), name="kind"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[str] = _run_fk()
    round_number: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))
    loss: Mapped[float | None] = mapped_column(Float)
    accuracy: Mapped[float | None] = mapped_column(Float)
    num_examples: Mapped[int | None] = mapped_column(Integer)
    metrics: Mapped[dict[str, Any]]


class RunEventRow(Base):
    __tablename__ = "run_events"
    __table_args__ = (Index(None, "run_id", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[str] = _run_fk()
    at: Mapped[datetime]
    kind: Mapped[str] = mapped_column(String(32))  # EVENT_KINDS; free text for new kinds
    message: Mapped[str] = mapped_column(Text)
