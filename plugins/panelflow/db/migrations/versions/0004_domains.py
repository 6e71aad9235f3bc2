"""Domains customers add to the panel, and their ownership verification by TXT record.

Revision ID: 0004
Revises: 0003
"""
import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "domains",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("customer_id", sa.BigInteger, nullable=False),
        sa.Column("name", sa.Text, nullable=False, unique=True),
        sa.Column("contact_email", sa.Text, nullable=False),
        sa.Column("verification_token", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False, server_default="pending"),
        sa.Column("verified_at", TS),
        sa.Column("last_checked_at", TS),
        sa.Column("last_error", sa.Text),
        sa.Column("created_at", TS, nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint("status IN ('pending', 'verified')", name="ck_domains_status"),
    )
    op.create_index("ix_domains_pending", "domains", ["last_checked_at", "id"],
                    postgresql_where=sa.text("status = 'pending'"))


def downgrade() -> None:
    op.drop_table("domains")
