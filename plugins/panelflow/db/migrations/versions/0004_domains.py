"""Domains customers add to the panel, and their ownership verification by TXT record."""
import sqlalchemy as sa
from alembic import op

from panelflow.db.ddl import TS, identity, one_of, required

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    op.create_table(
        "domains", identity(),
        required("customer_id", sa.BigInteger), required("name", sa.Text, unique=True),
        required("contact_email", sa.Text), required("verification_token", sa.Text),
        required("status", sa.Text, default="pending"),
        sa.Column("verified_at", TS), sa.Column("last_checked_at", TS), sa.Column("last_error", sa.Text),
        required("created_at", TS, default=sa.func.now()),
        one_of("domains", "status", ("pending", "verified")),
    )
    op.create_index("ix_domains_pending", "domains", ["last_checked_at", "id"],
                    postgresql_where=sa.text("status = 'pending'"))


def downgrade() -> None:
    op.drop_table("domains")
