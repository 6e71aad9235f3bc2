"""The panel's licence and its alerts; Ingram Micro subscription cancellations."""
from alembic import op  # noqa: F401

revision = "0032"
down_revision = "0031"


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
