"""The e-mail outbox: the one path every notice, invoice and campaign message takes.

A message is written once per event (``dedupe_key`` is unique, so a rerun that enqueues the
same notice again adds nothing) and moves pending → claimed → sending → sent, or back to
pending with a later ``not_before`` after a transient failure, or to failed / uncertain.

Revision ID: 0002
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
STATUSES = ("pending", "claimed", "sending", "sent", "failed", "uncertain")


def upgrade() -> None:
    op.create_table(
        "email_outbox",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("dedupe_key", sa.Text, nullable=False, unique=True),
        sa.Column("template", sa.Text, nullable=False),
        sa.Column("to_address", sa.Text, nullable=False),
        sa.Column("from_address", sa.Text),
        sa.Column("subject", sa.Text, nullable=False),
        sa.Column("body_text", sa.Text, nullable=False),
        sa.Column("body_html", sa.Text),
        sa.Column("headers", JSONB, nullable=False, server_default="{}"),
        sa.Column("priority", sa.SmallInteger, nullable=False, server_default="5"),
        sa.Column("status", sa.Text, nullable=False, server_default="pending"),
        sa.Column("not_before", TS, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("last_error", sa.Text),
        sa.Column("claimed_by", sa.Text),
        sa.Column("claimed_at", TS),
        sa.Column("sent_at", TS),
        sa.Column("message_id", sa.Text, nullable=False),
        sa.Column("created_at", TS, nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint("status IN (" + ", ".join(f"'{s}'" for s in STATUSES) + ")", name="ck_email_outbox_status"),
        sa.CheckConstraint("priority BETWEEN 0 AND 10", name="ck_email_outbox_priority"),
    )
    op.create_index("ix_email_outbox_due", "email_outbox", ["priority", "not_before", "id"],
                    postgresql_where=sa.text("status = 'pending'"))
    op.create_index("ix_email_outbox_in_flight", "email_outbox", ["claimed_at"],
                    postgresql_where=sa.text("status IN ('claimed', 'sending')"))
    op.add_column("email_logs", sa.Column("outbox_id", sa.BigInteger))
    op.add_column("email_logs", sa.Column("message_id", sa.Text))
    op.add_column("email_logs", sa.Column("error", sa.Text))


def downgrade() -> None:
    for column in ("error", "message_id", "outbox_id"):
        op.drop_column("email_logs", column)
    op.drop_table("email_outbox")
