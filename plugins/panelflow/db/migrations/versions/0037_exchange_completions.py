"""Exchange and Hyper-V completions: signatures, mailbox load, database locations, usage reports, PST clean-up, VM paths."""
from alembic import op  # noqa: F401

revision = "0037"
down_revision = "0036"


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
