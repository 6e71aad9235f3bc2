"""Voice: the SIP platform's companies, subscribers, numbers, usage and contracts in the panel DB."""
from alembic import op  # noqa: F401

revision = "0022"
down_revision = "0021"


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
