"""Foundation: the tables the first built steps own — retention targets, sessions, the
group-action queue daemons wake on, and the bookkeeping that keeps bounded deletes idempotent.
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

from panelflow.db.ddl import TS, identity, one_of, required, table_with_time_index

revision = "0001"
down_revision = None


def upgrade() -> None:
    text, big = sa.Text, sa.BigInteger
    table_with_time_index("service_queue_logs", "logged_at",
                          required("order_id", big), required("level", text, default="info"), required("message", text),
                          required("logged_at", TS))
    table_with_time_index("voice_bill_records", "billed_at",
                          required("company_id", big), required("subscriber", text),
                          required("minutes", sa.Numeric(12, 2), default="0"), required("amount", sa.Numeric(14, 4)),
                          required("currency", sa.CHAR(3)), required("billed_at", TS))
    table_with_time_index("temp_data", "created_at",
                          required("kind", text), required("payload", JSONB, default="{}"), required("created_at", TS))
    table_with_time_index("azure_rates", "fetched_at",
                          required("meter_id", text), required("region", text),
                          required("unit_price", sa.Numeric(18, 8)), required("currency", sa.CHAR(3)),
                          required("effective_date", sa.Date), required("fetched_at", TS))
    table_with_time_index("o365_subscription_reconciliations", "reconciled_at",
                          required("tenant_id", text), required("subscription_id", text),
                          required("difference", JSONB, default="{}"), required("reconciled_at", TS))
    table_with_time_index("email_logs", "sent_at",
                          required("recipient", text), required("subject", text), required("status", text),
                          required("sent_at", TS))
    table_with_time_index(
        "sessions", "expires_at",
        required("session_key", text, unique=True), required("user_kind", text), required("user_id", big),
        required("started_at", TS), required("last_seen_at", TS), required("expires_at", TS),
        sa.Column("ended_at", TS), required("status", text, default="active"),
        one_of("sessions", "status", ("active", "logged_out")),
        one_of("sessions", "user_kind", ("employee", "reseller", "customer", "user")),
    )
    table_with_time_index(
        "session_history", "ended_at",
        required("session_key", text, unique=True), required("user_kind", text), required("user_id", big),
        required("started_at", TS), required("ended_at", TS), required("end_reason", text),
    )

    op.create_table(
        "group_action_jobs", identity(),
        required("backend", text), required("action", text), required("payload", JSONB, default="{}"),
        required("priority", sa.SmallInteger, default="5"), required("status", text, default="pending"),
        required("attempts", sa.Integer, default="0"), sa.Column("result", JSONB), sa.Column("error", text),
        required("created_at", TS, default=sa.func.now()), sa.Column("started_at", TS), sa.Column("finished_at", TS),
        sa.CheckConstraint("priority BETWEEN 0 AND 10", name="ck_group_action_jobs_priority"),
        one_of("group_action_jobs", "status", ("pending", "running", "succeeded", "failed")),
    )
    op.create_index("ix_group_action_jobs_pending", "group_action_jobs", ["backend", "priority", "id"],
                    postgresql_where=sa.text("status = 'pending'"))

    op.create_table(
        "retention_runs",
        sa.Column("task", text, primary_key=True),
        sa.Column("interval_end", TS, primary_key=True),
        required("deleted", big, default="0"),
    )


def downgrade() -> None:
    for table in ("retention_runs", "group_action_jobs", "session_history", "sessions", "email_logs",
                  "o365_subscription_reconciliations", "azure_rates", "temp_data", "voice_bill_records",
                  "service_queue_logs"):
        op.drop_table(table)
