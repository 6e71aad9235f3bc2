"""Active Directory: organisations, users, lock state, password expiry, staff and RDS links, group-action state (reserved)

Revision ID: 0015
Revises: 0014
"""
from alembic import op  # noqa: F401

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
