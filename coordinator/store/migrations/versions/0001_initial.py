"""Initial schema: runs, rounds, client_updates, evaluations.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Written out rather than imported from models: a revision is frozen history.
_TZ = sa.DateTime(timezone=True)


def _run_fk(table: str) -> sa.Column:
    return sa.Column(
        "run_id",
        sa.String(36),
        sa.ForeignKey("runs.id", name=f"fk_{table}_run_id_runs", ondelete="CASCADE"),
        nullable=False,
    )


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("mode", sa.String(32), nullable=False),
        sa.Column("optimizer", sa.String(32), nullable=False),
        sa.Column("combiner", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("num_rounds_planned", sa.Integer(), nullable=False),
        sa.Column("started_at", _TZ, nullable=False),
        sa.Column("finished_at", _TZ, nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("flower_run_id", sa.String(32), nullable=True),
        sa.Column("out_dir", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_runs"),
        sa.CheckConstraint(
            "status IN ('running', 'completed', 'failed', 'interrupted')",
            name="ck_runs_status",
        ),
    )
    op.create_table(
        "rounds",
        sa.Column("id", sa.Integer(), nullable=False),
        _run_fk("rounds"),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("started_at", _TZ, nullable=False),
        sa.Column("finished_at", _TZ, nullable=True),
        sa.Column("send_s", sa.Float(), nullable=True),
        sa.Column("wait_s", sa.Float(), nullable=True),
        sa.Column("merge_s", sa.Float(), nullable=True),
        sa.Column("evaluate_s", sa.Float(), nullable=True),
        sa.Column("num_clients", sa.Integer(), nullable=True),
        sa.Column("num_accepted", sa.Integer(), nullable=True),
        sa.Column("num_rejected", sa.Integer(), nullable=True),
        sa.Column("metrics", sa.JSON(), nullable=True),
        sa.Column("checkpoint_path", sa.Text(), nullable=True),
        sa.Column("checkpoint_sha256", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_rounds"),
        sa.UniqueConstraint("run_id", "number", name="uq_rounds_run_id_number"),
        sa.CheckConstraint(
            "status IN ('running', 'committed', 'aborted')", name="ck_rounds_status"
        ),
    )
    op.create_table(
        "client_updates",
        sa.Column("id", sa.Integer(), nullable=False),
        _run_fk("client_updates"),
        sa.Column("round_number", sa.Integer(), nullable=False),
        sa.Column("node_id", sa.String(32), nullable=False),
        sa.Column("partition_id", sa.Integer(), nullable=True),
        sa.Column("num_examples", sa.Integer(), nullable=True),
        sa.Column("offset_norm", sa.Float(), nullable=True),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("accepted", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("train_seconds", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_client_updates"),
    )
    op.create_table(
        "evaluations",
        sa.Column("id", sa.Integer(), nullable=False),
        _run_fk("evaluations"),
        sa.Column("round_number", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("loss", sa.Float(), nullable=True),
        sa.Column("accuracy", sa.Float(), nullable=True),
        sa.Column("num_examples", sa.Integer(), nullable=True),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_evaluations"),
        sa.CheckConstraint(
            "kind IN ('central', 'federated', 'personalized')", name="ck_evaluations_kind"
        ),
    )


def downgrade() -> None:
    for table in ("evaluations", "client_updates", "rounds", "runs"):
        op.drop_table(table)
