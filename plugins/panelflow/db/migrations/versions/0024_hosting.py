"""Web hosting (Hostmatic): servers, sites, databases and their users, FTP accounts, white-label URLs."""
from alembic import op  # noqa: F401

revision = "0024"
down_revision = "0023"


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
