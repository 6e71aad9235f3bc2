"""E-mail campaigns: a campaign, its recipients, the unsubscribe list; outbox rows know their
campaign and can be cancelled (an address unsubscribed after its message was queued).
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

from panelflow.db.ddl import TS, identity, is_one_of, one_of, required

revision = "0003"
down_revision = "0002"

OUTBOX_STATUSES = ("pending", "claimed", "sending", "sent", "failed", "uncertain")  # as 0002 left them


def _outbox_statuses(*statuses: str) -> None:
    op.drop_constraint("ck_email_outbox_status", "email_outbox")
    op.create_check_constraint("ck_email_outbox_status", "email_outbox", is_one_of("status", statuses))


def upgrade() -> None:
    text = sa.Text
    op.create_table(
        "email_campaigns", identity(),
        required("name", text), required("subject_template", text), required("text_template", text),
        sa.Column("html_template", text), required("context", JSONB, default="{}"), sa.Column("from_address", text),
        required("send_at", TS), sa.Column("rate_per_minute", sa.Integer),
        required("status", text, default="scheduled"), sa.Column("expanded_at", TS), sa.Column("finished_at", TS),
        required("created_at", TS, default=sa.func.now()),
        one_of("email_campaigns", "status", ("draft", "scheduled", "sending", "done", "cancelled")),
        sa.CheckConstraint("rate_per_minute IS NULL OR rate_per_minute > 0", name="ck_email_campaigns_rate"),
    )
    op.create_table(
        "email_campaign_recipients", identity(),
        required("campaign_id", sa.BigInteger, sa.ForeignKey("email_campaigns.id", ondelete="CASCADE")),
        required("email", text), sa.Column("name", text), required("data", JSONB, default="{}"),
        sa.UniqueConstraint("campaign_id", "email", name="uq_email_campaign_recipients"),
    )
    op.create_table(
        "email_unsubscribes",
        sa.Column("email", text, primary_key=True),  # stored lower-case
        required("unsubscribed_at", TS, default=sa.func.now()),
    )
    op.add_column("email_outbox", sa.Column("campaign_id", sa.BigInteger, sa.ForeignKey("email_campaigns.id")))
    op.create_index("ix_email_outbox_campaign", "email_outbox", ["campaign_id", "status"],
                    postgresql_where=sa.text("campaign_id IS NOT NULL"))
    _outbox_statuses(*OUTBOX_STATUSES, "cancelled")


def downgrade() -> None:
    op.execute("DELETE FROM email_outbox WHERE status = 'cancelled'")
    _outbox_statuses(*OUTBOX_STATUSES)
    op.drop_index("ix_email_outbox_campaign", "email_outbox")
    op.drop_column("email_outbox", "campaign_id")
    for table in ("email_unsubscribes", "email_campaign_recipients", "email_campaigns"):
        op.drop_table(table)
