"""Exchange mailboxes, permissions, forwarding, OWA policies, connectors, spam filters, remote domains (reserved)

Revision ID: 0017
Revises: 0016
"""
from alembic import op  # noqa: F401

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
