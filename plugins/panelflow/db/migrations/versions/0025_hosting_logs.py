"""Web hosting: IIS log files read over SMB for bandwidth, Work Folders shares."""
from alembic import op  # noqa: F401

revision = "0025"
down_revision = "0024"


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
