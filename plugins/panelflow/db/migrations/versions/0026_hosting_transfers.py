"""Web hosting: transfers between servers, database backups, load-balanced peer sync."""
from alembic import op  # noqa: F401

revision = "0026"
down_revision = "0025"


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
