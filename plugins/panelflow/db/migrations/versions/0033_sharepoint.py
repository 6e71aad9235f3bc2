"""SharePoint on-premises and Online: site collections, owners, storage, farm editions, portal usage reports."""
from alembic import op  # noqa: F401

revision = "0033"
down_revision = "0032"


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
