"""E-mail campaigns: a campaign, its recipients, the unsubscribe list; outbox rows know their
campaign and can be cancelled (an address unsubscribed after its message was queued).

Revision ID: 0003
Revises: 0002
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "email_campaigns",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("subject_template", sa.Text, nullable=False),
        sa.Column("text_template", sa.Text, nullable=False),
        sa.Column("html_template", sa.Text),
        sa.Column("context", JSONB, nullable=False, server_default="{}"),
        sa.Column("from_address", sa.Text),
        sa.Column("send_at", TS, nullable=False),
        sa.Column("rate_per_minute", sa.Integer),
        sa.Column("status", sa.Text, nullable=False, server_default="scheduled"),
        sa.Column("expanded_at", TS),
        sa.Column("finished_at", TS),
        sa.Column("created_at", TS, nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint("status IN ('draft', 'scheduled', 'sending', 'done', 'cancelled')", name="ck_email_campaigns_status"),
        sa.CheckConstraint("rate_per_minute IS NULL OR rate_per_minute > 0", name="ck_email_campaigns_rate"),
    )
    op.create_table(
        "email_campaign_recipients",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("campaign_id", sa.BigInteger, sa.ForeignKey("email_campaigns.id", ondelete="CASCADE"), nullable=False),
        sa.Column("email", sa.Text, nullable=False),
        sa.Column("name", sa.Text),
        sa.Column("data", JSONB, nullable=False, server_default="{}"),
        sa.UniqueConstraint("campaign_id", "email", name="uq_email_campaign_recipients"),
    )
    op.create_table(
        "email_unsubscribes",
        sa.Column("email", sa.Text, primary_key=True),  # stored lower-case
        sa.Column("unsubscribed_at", TS, nullable=False, server_default=sa.func.now()),
    )
    op.add_column("email_outbox", sa.Column("campaign_id", sa.BigInteger, sa.ForeignKey("email_campaigns.id")))
    op.create_index("ix_email_outbox_campaign", "email_outbox", ["campaign_id", "status"],
                    postgresql_where=sa.text("campaign_id IS NOT NULL"))
    op.drop_constraint("ck_email_outbox_status", "email_outbox")
    op.create_check_constraint(
        "ck_email_outbox_status", "email_outbox",
        "status IN ('pending', 'claimed', 'sending', 'sent', 'failed', 'uncertain', 'cancelled')")


def downgrade() -> None:
    op.execute("DELETE FROM email_outbox WHERE status = 'cancelled'")
    op.drop_constraint("ck_email_outbox_status", "email_outbox")
    op.create_check_constraint(
        "ck_email_outbox_status", "email_outbox",
        "status IN ('pending', 'claimed', 'sending', 'sent', 'failed', 'uncertain')")
    op.drop_index("ix_email_outbox_campaign", "email_outbox")
    op.drop_column("email_outbox", "campaign_id")
    for table in ("email_unsubscribes", "email_campaign_recipients", "email_campaigns"):
        op.drop_table(table)
