"""Orders: the service queue, order jobs, activation and pay-per-use rating."""
from alembic import op  # noqa: F401

revision = "0028"
down_revision = "0027"


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
