"""Active Directory completions: contacts, the backup of users for a restore, UPN suffixes, orphan users."""
from alembic import op  # noqa: F401

revision = "0036"
down_revision = "0035"


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
