"""Microsoft 365 tenants as Graph shows them: tenants and their credentials' connection names, domains, subscribed SKUs, users with licences, mailboxes, groups and members, contacts, admin audit logs, delta state (Office365SyncWork, O365SyncAdminLogsWork, Office365TenantFirstSyncWork).

Revision ID: 0012
Revises: 0011
"""
from alembic import op  # noqa: F401

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
