"""Panel and Microsoft 365 admin audit logs, each with an archive table of the same shape.

The live tables keep recent entries (what the panel's audit screens read); ProvisioningWork
moves older entries to the archives and removes archived entries past their retention.
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

from panelflow.db.ddl import TS, required

revision = "0005"
down_revision = "0004"


def _audit(name: str, *extra: sa.Column, archive: bool = False) -> None:
    op.create_table(
        name,
        # live tables number their entries (bigserial); an archive keeps the live entry's id
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=not archive),
        required("occurred_at", TS), required("actor", sa.Text), required("action", sa.Text),
        sa.Column("target", sa.Text), required("details", JSONB, default="{}"),
        *extra,
    )
    op.create_index(f"ix_{name}_occurred_at", name, ["occurred_at"])


def upgrade() -> None:
    _audit("audit_logs")
    _audit("audit_logs_archive", required("archived_at", TS), archive=True)
    _audit("o365_admin_audit_logs", required("tenant_id", sa.Text))
    _audit("o365_admin_audit_logs_archive", required("tenant_id", sa.Text), required("archived_at", TS), archive=True)


def downgrade() -> None:
    for table in ("o365_admin_audit_logs_archive", "o365_admin_audit_logs", "audit_logs_archive", "audit_logs"):
        op.drop_table(table)
