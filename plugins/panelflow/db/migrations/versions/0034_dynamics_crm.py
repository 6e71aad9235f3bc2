"""Dynamics CRM (Dataverse): organisations, business units, security roles, users and the name sync

What GroupActionWorkCRM and SyncFromBackendWork 1 keep (``panelflow.steps.crm``). CRM is the truth
for who exists and what they may do; the panel mirrors it so its pages and group actions can name
users and roles without asking Dataverse, and keeps the little the panel owns (names it edited, the
roles a disable took away).

- ``crm_organizations``: written by the panel (the customer's Dynamics environment). ``url`` is the
  organisation URL (``https://contoso.crm.dynamics.com``), ``conn_id`` the Airflow connection holding
  the app registration that signs in to it (client id, secret, tenant — never stored here).
  SyncFromBackendWork 1 fills ``crm_organization_id``/``crm_name`` and ``synced_at``/``last_error``.
- ``crm_business_units`` / ``crm_roles``: mirrors of Dataverse ``businessunits`` and ``roles`` written
  by SyncFromBackendWork 1 (a row that left CRM is dropped: nothing else points at it). A security
  role exists once per business unit, so a role is (organisation, roleid) with its business unit.
- ``crm_users``: one row per Dataverse ``systemusers`` record, keyed by (organisation, systemuserid).
  Written by SyncFromBackendWork 1 (everything CRM owns: UPN, business unit, ``isdisabled``, access
  mode, CAL type, roles, modifiedon, etag; a user gone from CRM gets ``removed_at``), by
  GroupActionWorkCRM 1 (roles, access mode, licence, ``access_revoked``/``suspended_roles``: the roles
  a ``disable_user`` job removed, restored by ``enable_user``) and by GroupActionWorkCRM 2 (the names).
  The panel edits ``first_name``/``last_name`` and stamps ``names_changed_at``; ``synced_first_name``/
  ``synced_last_name`` are the names both sides agreed on at the last name sync, the baseline that
  tells which side changed since.
"""
from alembic import op

from panelflow.db.ddl import conn_id_check

revision = "0034"
down_revision = "0033"

DDL = rf"""
CREATE TABLE crm_organizations (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id bigint NOT NULL REFERENCES customers ON DELETE CASCADE,
    url text NOT NULL UNIQUE CHECK (url ~ '^https?://[^/?#\s]+(/[^?#\s]*)?$'),
    conn_id text NOT NULL {conn_id_check("conn_id")},
    enabled boolean NOT NULL DEFAULT true,
    crm_organization_id uuid,                      -- Dataverse organizationid (SyncFromBackendWork 1)
    crm_name text,
    synced_at timestamptz,                         -- the last complete pull (the run's clock)
    tried_at timestamptz,                          -- the last try of any CRM step (sync or name sync)
    last_error text                                -- and why it failed (NULL: it answered)
);

CREATE TABLE crm_business_units (
    organization_id bigint NOT NULL REFERENCES crm_organizations ON DELETE CASCADE,
    businessunitid uuid NOT NULL,
    name text NOT NULL,
    parent_businessunitid uuid,                    -- NULL: the root business unit
    synced_at timestamptz NOT NULL,
    PRIMARY KEY (organization_id, businessunitid)
);

CREATE TABLE crm_roles (
    organization_id bigint NOT NULL REFERENCES crm_organizations ON DELETE CASCADE,
    roleid uuid NOT NULL,
    businessunitid uuid NOT NULL,
    name text NOT NULL,
    synced_at timestamptz NOT NULL,
    PRIMARY KEY (organization_id, roleid)
);

CREATE TABLE crm_users (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    organization_id bigint NOT NULL REFERENCES crm_organizations ON DELETE CASCADE,
    systemuserid uuid NOT NULL,
    domainname text,                               -- the UPN the user signs in with
    businessunitid uuid,
    first_name text,                               -- the panel's value (the panel edits it)
    last_name text,
    names_changed_at timestamptz,                  -- stamped by the panel when it edits a name
    synced_first_name text,                        -- the names both sides had at the last name sync
    synced_last_name text,
    crm_modified_on timestamptz,                   -- Dataverse modifiedon when last read
    is_disabled boolean NOT NULL DEFAULT false,    -- Dataverse isdisabled (follows Microsoft Entra ID)
    access_mode smallint CHECK (access_mode BETWEEN 0 AND 5),
    cal_type smallint CHECK (cal_type BETWEEN 0 AND 12),
    roles uuid[] NOT NULL DEFAULT '{{}}',
    access_revoked boolean NOT NULL DEFAULT false, -- a disable_user job took every role away
    suspended_roles uuid[] NOT NULL DEFAULT '{{}}',  -- the roles it took, given back by enable_user
    etag text,
    first_seen_at timestamptz NOT NULL,
    synced_at timestamptz NOT NULL,
    removed_at timestamptz,                        -- no longer in CRM
    UNIQUE (organization_id, systemuserid)
);
CREATE INDEX ix_crm_users_domainname ON crm_users (organization_id, lower(domainname));
"""


def upgrade() -> None:
    op.execute(DDL)


def downgrade() -> None:
    op.execute("DROP TABLE crm_users, crm_roles, crm_business_units, crm_organizations")
