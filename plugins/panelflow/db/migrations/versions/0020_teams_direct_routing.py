"""Teams direct routing per tenant: SBCs, their renewal state (reserved)

What the panel wants (written by the panel, read by Office365Work step 4,
:mod:`panelflow.steps.microsoft365.teams_direct_routing`):

- ``teams_direct_routing`` — one row per Microsoft 365 tenant whose Teams calls go through the
  provider's session border controllers: the PSTN usage and the voice route (number pattern,
  priority) that send them there, and ``psrp_conn_id``, the Airflow ``psrp`` connection of the
  Windows host with the MicrosoftTeams module that manages it (NULL: the step's default,
  ``teams_powershell``). ``enabled = false`` leaves the tenant's Teams alone.
- ``teams_sbcs`` — the tenant's SBCs (online PSTN gateways) and their desired settings.
  ``max_concurrent_sessions`` NULL means "not managed" (Teams' value is left as it is).

What Teams has (written by the step only):

- ``teams_pstn_gateways`` — every online PSTN gateway of the tenant as Teams reported it at the
  last session (``managed``: one of ``teams_sbcs``; others are reported, never changed);
  ``changed_at``: the last session that created or changed it.
- ``teams_direct_routing_sessions`` — the per-tenant Teams session: when it was last renewed
  (connected with new tokens), when those tokens expire, how many renewals, the desired
  configuration it left in place (``applied_config``, an md5 of it), the changes the last session
  made, the voice route as Teams reported it, and the last error. No token is ever stored.
"""
from alembic import op  # noqa: F401

revision = "0020"
down_revision = "0019"

DDL = r"""
CREATE TABLE teams_direct_routing (
    tenant_id uuid PRIMARY KEY REFERENCES m365_tenants ON DELETE CASCADE,
    enabled boolean NOT NULL DEFAULT true,
    psrp_conn_id text CHECK (psrp_conn_id <> ''),
    pstn_usage text NOT NULL CHECK (btrim(pstn_usage) <> ''),
    voice_route text NOT NULL CHECK (btrim(voice_route) <> ''),
    number_pattern text NOT NULL DEFAULT '.*' CHECK (number_pattern <> ''),
    route_priority integer NOT NULL DEFAULT 1 CHECK (route_priority >= 0)
);

CREATE TABLE teams_sbcs (
    tenant_id uuid NOT NULL REFERENCES teams_direct_routing ON DELETE CASCADE,
    fqdn text NOT NULL CHECK (fqdn = lower(fqdn)
                              AND fqdn ~ '^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+$'),
    sip_signaling_port integer NOT NULL CHECK (sip_signaling_port BETWEEN 1 AND 65535),
    max_concurrent_sessions integer CHECK (max_concurrent_sessions > 0),
    enabled boolean NOT NULL DEFAULT true,
    PRIMARY KEY (tenant_id, fqdn)
);

CREATE TABLE teams_pstn_gateways (
    tenant_id uuid NOT NULL REFERENCES m365_tenants ON DELETE CASCADE,
    fqdn text NOT NULL,
    sip_signaling_port integer NOT NULL,
    max_concurrent_sessions integer,
    enabled boolean NOT NULL,
    failover_time_seconds integer,
    forward_call_history boolean,
    forward_pai boolean,
    send_sip_options boolean,
    media_bypass boolean,
    managed boolean NOT NULL,
    observed_at timestamptz NOT NULL,
    changed_at timestamptz,
    PRIMARY KEY (tenant_id, fqdn)
);

CREATE TABLE teams_direct_routing_sessions (
    tenant_id uuid PRIMARY KEY REFERENCES m365_tenants ON DELETE CASCADE,
    psrp_conn_id text,
    teams_tenant_name text,
    renewed_at timestamptz,
    graph_token_expires_at timestamptz,
    teams_token_expires_at timestamptz,
    renewals integer NOT NULL DEFAULT 0,
    applied_config text,
    last_changes jsonb NOT NULL DEFAULT '[]',
    voice_route jsonb,
    last_error text, last_error_at timestamptz
);
"""


def upgrade() -> None:
    op.execute(DDL)


def downgrade() -> None:
    op.execute("DROP TABLE teams_direct_routing_sessions, teams_pstn_gateways, teams_sbcs, teams_direct_routing")
