"""Producers for tables read before they had one: recycle-bin items, CSP trials, O365 price lists, usage samples."""
from alembic import op  # noqa: F401

revision = "0038"
down_revision = "0037"


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
