"""run_events table, rounds.attempts, indexes on the per-round tables.

Revision ID: 0002
Revises: 0001
Create Date: 2025-01-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "run_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column(
            "run_id",
            sa.String(36),
            sa.ForeignKey("runs.id", name="fk_run_events_run_id_runs", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_run_events"),
    )
    op.create_index("ix_run_events_run_id", "run_events", ["run_id", "at"])
    # Rounds written before this revision ran once: the server default says so.
    with op.batch_alter_table("rounds") as batch:
        batch.add_column(
            sa.Column("attempts", sa.Integer(), nullable=False, server_default=sa.text("1"))
        )
    op.create_index("ix_client_updates_run_id", "client_updates", ["run_id", "round_number"])
    op.create_index("ix_evaluations_run_id", "evaluations", ["run_id", "round_number"])


def downgrade() -> None:
    op.drop_index("ix_evaluations_run_id", table_name="evaluations")
    op.drop_index("ix_client_updates_run_id", table_name="client_updates")
    with op.batch_alter_table("rounds") as batch:
        batch.drop_column("attempts")
    op.drop_index("ix_run_events_run_id", table_name="run_events")
    op.drop_table("run_events")
