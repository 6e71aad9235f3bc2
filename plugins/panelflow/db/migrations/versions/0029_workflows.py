"""Workflows created in the panel, VPS update notices and configuration-studio templates."""
from alembic import op  # noqa: F401

revision = "0029"
down_revision = "0028"


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
