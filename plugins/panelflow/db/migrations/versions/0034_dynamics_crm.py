"""Dynamics CRM (Dataverse): organisations, users, roles and the name sync."""
from alembic import op  # noqa: F401

revision = "0034"
down_revision = "0033"


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
