"""Lync / Skype for Business: pools, users, SPLA reports, call-record import and workflow audio files."""
from alembic import op  # noqa: F401

revision = "0023"
down_revision = "0022"


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
