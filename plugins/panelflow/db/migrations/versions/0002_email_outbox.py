"""The e-mail outbox: the one path every notice, invoice and campaign message takes.

A message is written once per event (``dedupe_key`` is unique, so a rerun that enqueues the
same notice again adds nothing) and moves pending → claimed → sending → sent, or back to
pending with a later ``not_before`` after a transient failure, or to failed / uncertain.
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

from panelflow.db.ddl import TS, identity, one_of, required

revision = "0002"
down_revision = "0001"

STATUSES = ("pending", "claimed", "sending", "sent", "failed", "uncertain")


def upgrade() -> None:
    text = sa.Text
    op.create_table(
        "email_outbox", identity(),
        required("dedupe_key", text, unique=True), required("template", text),
        required("to_address", text), sa.Column("from_address", text),
        required("subject", text), required("body_text", text), sa.Column("body_html", text),
        required("headers", JSONB, default="{}"), required("priority", sa.SmallInteger, default="5"),
        required("status", text, default="pending"), required("not_before", TS),
        required("attempts", sa.Integer, default="0"), sa.Column("last_error", text),
        sa.Column("claimed_by", text), sa.Column("claimed_at", TS), sa.Column("sent_at", TS),
        required("message_id", text), required("created_at", TS, default=sa.func.now()),
        one_of("email_outbox", "status", STATUSES),
        sa.CheckConstraint("priority BETWEEN 0 AND 10", name="ck_email_outbox_priority"),
    )
    op.create_index("ix_email_outbox_due", "email_outbox", ["priority", "not_before", "id"],
                    postgresql_where=sa.text("status = 'pending'"))
    op.create_index("ix_email_outbox_in_flight", "email_outbox", ["claimed_at"],
                    postgresql_where=sa.text("status IN ('claimed', 'sending')"))
    for column, type_ in (("outbox_id", sa.BigInteger), ("message_id", text), ("error", text)):
        op.add_column("email_logs", sa.Column(column, type_))


def downgrade() -> None:
    for column in ("error", "message_id", "outbox_id"):
        op.drop_column("email_logs", column)
    op.drop_table("email_outbox")
