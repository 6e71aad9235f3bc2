"""Panel and Microsoft 365 admin audit logs, each with an archive table of the same shape.

The live tables keep recent entries (what the panel's audit screens read); ProvisioningWork
moves older entries to the archives and removes archived entries past their retention.

Revision ID: 0005
Revises: 0004
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def _audit(name: str, *extra: sa.Column, archive: bool = False) -> None:
    op.create_table(
        name,
        # live tables number their entries (bigserial); an archive keeps the live entry's id
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=not archive),
        sa.Column("occurred_at", TS, nullable=False),
        sa.Column("actor", sa.Text, nullable=False),
        sa.Column("action", sa.Text, nullable=False),
        sa.Column("target", sa.Text),
        sa.Column("details", JSONB, nullable=False, server_default="{}"),
        *extra,
    )
    op.create_index(f"ix_{name}_occurred_at", name, ["occurred_at"])


def upgrade() -> None:
    _audit("audit_logs")
    _audit("audit_logs_archive", sa.Column("archived_at", TS, nullable=False), archive=True)
    _audit("o365_admin_audit_logs", sa.Column("tenant_id", sa.Text, nullable=False))
    _audit("o365_admin_audit_logs_archive", sa.Column("tenant_id", sa.Text, nullable=False),
           sa.Column("archived_at", TS, nullable=False), archive=True)


def downgrade() -> None:
    for table in ("o365_admin_audit_logs_archive", "o365_admin_audit_logs", "audit_logs_archive", "audit_logs"):
        op.drop_table(table)
