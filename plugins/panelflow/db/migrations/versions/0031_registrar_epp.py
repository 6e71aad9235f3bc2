"""Registrars over EPP: accounts, domain and contact state, poll messages, the iNET name-server policy."""
from alembic import op  # noqa: F401

revision = "0031"
down_revision = "0030"


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
