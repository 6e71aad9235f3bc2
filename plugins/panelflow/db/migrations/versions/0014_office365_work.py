"""Office365Work: each tenant's token session (renewed, used, closed as idle, last error).

``m365_tenant_tokens`` — one row per ``m365_tenants`` row once Office365Work has touched it:

- ``renewed_at`` / ``expires_at``: the last token obtained through the tenant's connection and
  when it expires (renew_tenant_access_tokens renews it before then);
- ``last_used_at``: the last run that worked a group-action job against the tenant (its
  activity); ``closed_at``: when clear_powershell_runspaces closed the session as idle — an idle
  session's token is not renewed again until the tenant is used;
- ``last_error`` / ``last_error_at``: the last renewal that failed (cleared by the next success).

No secret or token is stored: only times and errors. The group-action queue itself is
``group_action_jobs`` (0001), backend ``o365``.
"""
from alembic import op

revision = "0014"
down_revision = "0013"

DDL = """
CREATE TABLE m365_tenant_tokens (
    tenant_id uuid PRIMARY KEY REFERENCES m365_tenants ON DELETE CASCADE,
    renewed_at timestamptz,
    expires_at timestamptz,
    renewals integer NOT NULL DEFAULT 0,
    last_used_at timestamptz,
    closed_at timestamptz,
    last_error text,
    last_error_at timestamptz
);
"""


def upgrade() -> None:
    op.execute(DDL)


def downgrade() -> None:
    op.execute("DROP TABLE m365_tenant_tokens")
