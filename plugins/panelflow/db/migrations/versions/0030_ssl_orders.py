"""SSL certificate orders at DigiCert and Sectigo, their certificates and invoices."""
from alembic import op  # noqa: F401

revision = "0030"
down_revision = "0029"


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
