"""BlackBerry UEM: servers, users, devices and their state."""
from alembic import op  # noqa: F401

revision = "0035"
down_revision = "0034"


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
