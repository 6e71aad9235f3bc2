"""Foundation: the tables the first built steps own — retention targets, sessions, the
group-action queue daemons wake on, and the bookkeeping that keeps bounded deletes idempotent.

Revision ID: 0001
Revises:
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def _id() -> sa.Column:
    return sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True)


def upgrade() -> None:
    op.create_table(
        "service_queue_logs", _id(),
        sa.Column("order_id", sa.BigInteger, nullable=False),
        sa.Column("level", sa.Text, nullable=False, server_default="info"),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("logged_at", TS, nullable=False),
    )
    op.create_index("ix_service_queue_logs_logged_at", "service_queue_logs", ["logged_at"])

    op.create_table(
        "voice_bill_records", _id(),
        sa.Column("company_id", sa.BigInteger, nullable=False),
        sa.Column("subscriber", sa.Text, nullable=False),
        sa.Column("minutes", sa.Numeric(12, 2), nullable=False, server_default="0"),
        sa.Column("amount", sa.Numeric(14, 4), nullable=False),
        sa.Column("currency", sa.CHAR(3), nullable=False),
        sa.Column("billed_at", TS, nullable=False),
    )
    op.create_index("ix_voice_bill_records_billed_at", "voice_bill_records", ["billed_at"])

    op.create_table(
        "temp_data", _id(),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("payload", JSONB, nullable=False, server_default="{}"),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_index("ix_temp_data_created_at", "temp_data", ["created_at"])

    op.create_table(
        "azure_rates", _id(),
        sa.Column("meter_id", sa.Text, nullable=False),
        sa.Column("region", sa.Text, nullable=False),
        sa.Column("unit_price", sa.Numeric(18, 8), nullable=False),
        sa.Column("currency", sa.CHAR(3), nullable=False),
        sa.Column("effective_date", sa.Date, nullable=False),
        sa.Column("fetched_at", TS, nullable=False),
    )
    op.create_index("ix_azure_rates_fetched_at", "azure_rates", ["fetched_at"])

    op.create_table(
        "o365_subscription_reconciliations", _id(),
        sa.Column("tenant_id", sa.Text, nullable=False),
        sa.Column("subscription_id", sa.Text, nullable=False),
        sa.Column("difference", JSONB, nullable=False, server_default="{}"),
        sa.Column("reconciled_at", TS, nullable=False),
    )
    op.create_index("ix_o365_subscription_reconciliations_reconciled_at",
                    "o365_subscription_reconciliations", ["reconciled_at"])

    op.create_table(
        "email_logs", _id(),
        sa.Column("recipient", sa.Text, nullable=False),
        sa.Column("subject", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("sent_at", TS, nullable=False),
    )
    op.create_index("ix_email_logs_sent_at", "email_logs", ["sent_at"])

    op.create_table(
        "sessions", _id(),
        sa.Column("session_key", sa.Text, nullable=False, unique=True),
        sa.Column("user_kind", sa.Text, nullable=False),
        sa.Column("user_id", sa.BigInteger, nullable=False),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("last_seen_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("ended_at", TS),
        sa.Column("status", sa.Text, nullable=False, server_default="active"),
        sa.CheckConstraint("status IN ('active', 'logged_out')", name="ck_sessions_status"),
        sa.CheckConstraint("user_kind IN ('employee', 'reseller', 'customer', 'user')", name="ck_sessions_user_kind"),
    )
    op.create_index("ix_sessions_expires_at", "sessions", ["expires_at"])

    op.create_table(
        "session_history", _id(),
        sa.Column("session_key", sa.Text, nullable=False, unique=True),
        sa.Column("user_kind", sa.Text, nullable=False),
        sa.Column("user_id", sa.BigInteger, nullable=False),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("ended_at", TS, nullable=False),
        sa.Column("end_reason", sa.Text, nullable=False),
    )
    op.create_index("ix_session_history_ended_at", "session_history", ["ended_at"])

    op.create_table(
        "group_action_jobs", _id(),
        sa.Column("backend", sa.Text, nullable=False),
        sa.Column("action", sa.Text, nullable=False),
        sa.Column("payload", JSONB, nullable=False, server_default="{}"),
        sa.Column("priority", sa.SmallInteger, nullable=False, server_default="5"),
        sa.Column("status", sa.Text, nullable=False, server_default="pending"),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("result", JSONB),
        sa.Column("error", sa.Text),
        sa.Column("created_at", TS, nullable=False, server_default=sa.func.now()),
        sa.Column("started_at", TS),
        sa.Column("finished_at", TS),
        sa.CheckConstraint("priority BETWEEN 0 AND 10", name="ck_group_action_jobs_priority"),
        sa.CheckConstraint("status IN ('pending', 'running', 'succeeded', 'failed')", name="ck_group_action_jobs_status"),
    )
    op.create_index("ix_group_action_jobs_pending", "group_action_jobs", ["backend", "priority", "id"],
                    postgresql_where=sa.text("status = 'pending'"))

    op.create_table(
        "retention_runs",
        sa.Column("task", sa.Text, primary_key=True),
        sa.Column("interval_end", TS, primary_key=True),
        sa.Column("deleted", sa.BigInteger, nullable=False, server_default="0"),
    )


def downgrade() -> None:
    for table in ("retention_runs", "group_action_jobs", "session_history", "sessions", "email_logs",
                  "o365_subscription_reconciliations", "azure_rates", "temp_data", "voice_bill_records",
                  "service_queue_logs"):
        op.drop_table(table)
