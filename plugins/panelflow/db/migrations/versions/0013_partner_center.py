"""Partner Center and Azure: CSP profiles and offers, O365 subscriptions as Partner Center reports them and reconciliation differences, O365/CSP group actions, Azure retail prices (ReconciliateO365SubsWork, SyncCSPOffers, Office365Work, AzureRateWork).

Revision ID: 0013
Revises: 0012
"""
from alembic import op  # noqa: F401

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
