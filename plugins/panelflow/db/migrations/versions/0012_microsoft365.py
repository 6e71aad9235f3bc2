"""Microsoft 365 tenants as Graph shows them: tenants and their credentials' connection names, domains, subscribed SKUs, users with licences, mailboxes, groups and members, contacts, admin audit logs, delta state (Office365SyncWork, O365SyncAdminLogsWork, Office365TenantFirstSyncWork).

A tenant row names the Airflow connection (``msgraph`` type) that holds that tenant's app
credentials (``conn_id``): no secret is stored here. Office365SyncWork writes everything below
it; nothing else writes these tables.

Users and groups keep the Graph object as last read (``data``, the selected properties) and the
columns the panel queries are generated from it. A delta round returns a changed object with
"at least the changed properties", so a change is merged (``data || changed``) and the columns
follow by themselves. ``sync_gen`` is the full round that last wrote a row: when a full round
(the first sync, or after Graph expired the deltaLink) completes, rows it did not see are gone
from the tenant and are deleted. Later rounds read only changes from the deltaLink kept per
tenant and entity in ``m365_sync_state``.

The bulk tables (users, groups, members, contacts) have no foreign keys: a per-row check on
every row written would cost as much as the write, and only the sync writes them, deleting a
group's members with it. The small tables go with their tenant (``ON DELETE CASCADE``); forgetting
a tenant's bulk rows is ``DELETE … WHERE tenant_id = …`` on each (or unlinking it, ``enabled``).

Licences and mailboxes are views. A user's licences are its ``assignedLicenses``: one copy,
replaced with the user, never out of step with it (and not a second table to write per user).
Graph v1.0 has no mailbox collection: a user's mailbox is its ``mail`` address plus a licence
with an enabled Exchange plan, and a Microsoft 365 group's is the group's address
(``users/{id}/mailboxSettings`` would be one request per user).

Admin audit logs reuse ``o365_admin_audit_logs`` (0005): ``graph_id`` is the directoryAudit's id,
unique per tenant, so a rerun or an overlapping interval adds nothing twice; the archive gets the
column too (ProvisioningWork's archive copies its own column list).
"""
from alembic import op

revision = "0012"
down_revision = "0011"


def _from_data(column: str, prop: str, type_: str = "text") -> str:
    value = f"data ->> '{prop}'" if type_ == "text" else f"(data ->> '{prop}')::{type_}"
    return f"{column} {type_} GENERATED ALWAYS AS ({value}) STORED"


def _graph_objects(table: str, *columns: str) -> str:
    """A bulk table of Graph objects: ``data`` as last read, ``columns`` generated from it (see above)."""
    columns = ("tenant_id uuid NOT NULL", "id uuid NOT NULL", "data jsonb NOT NULL", *columns,
               "sync_gen bigint NOT NULL", "PRIMARY KEY (tenant_id, id)")
    return f"CREATE TABLE {table} (\n    " + ",\n    ".join(columns) + "\n);"


DDL = f"""
CREATE TABLE m365_tenants (
    tenant_id uuid PRIMARY KEY,                       -- the directory (Azure AD / Entra) tenant id
    conn_id text NOT NULL UNIQUE,                     -- its Airflow connection: one connection, one tenant
    customer_id bigint REFERENCES customers ON DELETE SET NULL,
    enabled boolean NOT NULL DEFAULT true,
    linked_at timestamptz NOT NULL DEFAULT now(),
    display_name text,                                -- from /organization
    default_domain text,
    country_code text,
    tenant_created_at timestamptz,
    last_sync_started_at timestamptz,
    last_synced_at timestamptz,                       -- the last run that synced every entity
    first_synced_at timestamptz,                      -- the first such run: Office365TenantFirstSyncWork's cue
    first_sync_notified_at timestamptz,
    last_error text,
    last_error_at timestamptz
);
CREATE INDEX ix_m365_tenants_first_sync_pending ON m365_tenants (first_synced_at)
    WHERE first_synced_at IS NOT NULL AND first_sync_notified_at IS NULL;

CREATE TABLE m365_domains (
    tenant_id uuid NOT NULL REFERENCES m365_tenants ON DELETE CASCADE,
    name text NOT NULL,
    is_default boolean NOT NULL DEFAULT false,
    is_initial boolean NOT NULL DEFAULT false,
    is_verified boolean NOT NULL DEFAULT false,
    authentication_type text,
    supported_services text[] NOT NULL DEFAULT '{{}}',
    sync_gen bigint NOT NULL,
    PRIMARY KEY (tenant_id, name)
);

CREATE TABLE m365_subscribed_skus (
    tenant_id uuid NOT NULL REFERENCES m365_tenants ON DELETE CASCADE,
    sku_id uuid NOT NULL,
    sku_part_number text NOT NULL,
    capability_status text,
    applies_to text,
    consumed_units integer NOT NULL DEFAULT 0,
    enabled_units integer NOT NULL DEFAULT 0,
    suspended_units integer NOT NULL DEFAULT 0,
    warning_units integer NOT NULL DEFAULT 0,
    service_plans jsonb NOT NULL DEFAULT '[]',        -- [{{servicePlanId, servicePlanName, provisioningStatus, appliesTo}}]
    sync_gen bigint NOT NULL,
    PRIMARY KEY (tenant_id, sku_id)
);

-- Tenant-wide policies as Graph returns them (authorizationPolicy, identitySecurityDefaultsEnforcementPolicy).
CREATE TABLE m365_policies (
    tenant_id uuid NOT NULL REFERENCES m365_tenants ON DELETE CASCADE,
    policy text NOT NULL,
    body jsonb NOT NULL,
    synced_at timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, policy)
);

{_graph_objects(
    "m365_users",
    _from_data("user_principal_name", "userPrincipalName"), _from_data("display_name", "displayName"),
    _from_data("mail", "mail"), _from_data("account_enabled", "accountEnabled", "boolean"),
    "CONSTRAINT ck_m365_users_licences"
    " CHECK (jsonb_typeof(coalesce(data -> 'assignedLicenses', '[]')) IN ('array', 'null'))")}

-- A user's licences are part of the user in Graph (assignedLicenses) and stay there: one copy,
-- replaced with the user, never out of step with it. Read tolerantly: an id that is not a GUID
-- (Graph sends none) reads as NULL rather than failing every query of the tenant.
CREATE VIEW m365_user_licenses AS
SELECT u.tenant_id, u.id AS user_id,
       CASE WHEN l ->> 'skuId' ~ '^[0-9A-Fa-f]{{8}}-[0-9A-Fa-f]{{4}}-[0-9A-Fa-f]{{4}}-[0-9A-Fa-f]{{4}}-[0-9A-Fa-f]{{12}}$'
            THEN (l ->> 'skuId')::uuid END AS sku_id,
       ARRAY(SELECT p::uuid FROM jsonb_array_elements_text(
                 CASE WHEN jsonb_typeof(l -> 'disabledPlans') = 'array' THEN l -> 'disabledPlans' ELSE '[]' END) p
             WHERE p ~ '^[0-9A-Fa-f]{{8}}-[0-9A-Fa-f]{{4}}-[0-9A-Fa-f]{{4}}-[0-9A-Fa-f]{{4}}-[0-9A-Fa-f]{{12}}$')
           AS disabled_plans
FROM m365_users u
CROSS JOIN LATERAL jsonb_array_elements(
    CASE WHEN jsonb_typeof(u.data -> 'assignedLicenses') = 'array' THEN u.data -> 'assignedLicenses' ELSE '[]' END) l
WHERE jsonb_typeof(l) = 'object';

{_graph_objects(
    "m365_groups",
    _from_data("display_name", "displayName"), _from_data("mail", "mail"),
    _from_data("mail_enabled", "mailEnabled", "boolean"), _from_data("security_enabled", "securityEnabled", "boolean"),
    "is_unified boolean GENERATED ALWAYS AS (coalesce(data -> 'groupTypes' ? 'Unified', false)) STORED")}

-- member_type: user, group, orgContact, device, servicePrincipal (Graph's @odata.type without its prefix)
CREATE TABLE m365_group_members (
    tenant_id uuid NOT NULL,
    group_id uuid NOT NULL,
    member_id uuid NOT NULL,
    member_type text NOT NULL,
    sync_gen bigint NOT NULL,
    PRIMARY KEY (tenant_id, group_id, member_id)
);
CREATE INDEX ix_m365_group_members_member ON m365_group_members (tenant_id, member_id);

{_graph_objects(
    "m365_contacts",
    _from_data("display_name", "displayName"), _from_data("mail", "mail"), _from_data("company_name", "companyName"))}

-- Per tenant and entity: the deltaLink that reads the next changes (users, groups), or the
-- point audit logs are synced up to (directoryAudits). round_gen: the full round in progress.
CREATE TABLE m365_sync_state (
    tenant_id uuid NOT NULL REFERENCES m365_tenants ON DELETE CASCADE,
    entity text NOT NULL CHECK (entity IN ('users', 'groups', 'contacts', 'directoryAudits')),
    delta_link text,
    watermark timestamptz,
    full_rounds integer NOT NULL DEFAULT 0,
    delta_rounds integer NOT NULL DEFAULT 0,
    last_full_at timestamptz,
    synced_at timestamptz,
    PRIMARY KEY (tenant_id, entity)
);

-- A full round's number; rows written by it carry it in sync_gen.
CREATE SEQUENCE m365_sync_gen;

CREATE VIEW m365_mailboxes AS
SELECT u.tenant_id, u.id AS object_id, 'user'::text AS kind, u.mail AS address, u.display_name,
       u.user_principal_name, u.account_enabled AS enabled,
       ARRAY(SELECT jsonb_array_elements_text(coalesce(u.data -> 'proxyAddresses', '[]'))) AS proxy_addresses
FROM m365_users u
WHERE u.mail IS NOT NULL AND EXISTS (
    SELECT 1
    FROM m365_user_licenses l
    JOIN m365_subscribed_skus s ON s.tenant_id = l.tenant_id AND s.sku_id = l.sku_id
    CROSS JOIN LATERAL jsonb_array_elements(s.service_plans) p
    WHERE l.tenant_id = u.tenant_id AND l.user_id = u.id
      AND p ->> 'servicePlanName' LIKE 'EXCHANGE!_%' ESCAPE '!'
      AND NOT (p ->> 'servicePlanId')::uuid = ANY (l.disabled_plans))
UNION ALL
SELECT g.tenant_id, g.id, 'group', g.mail, g.display_name, NULL, true,
       ARRAY(SELECT jsonb_array_elements_text(coalesce(g.data -> 'proxyAddresses', '[]')))
FROM m365_groups g
WHERE g.is_unified AND g.mail IS NOT NULL;

ALTER TABLE o365_admin_audit_logs ADD COLUMN graph_id text;
ALTER TABLE o365_admin_audit_logs_archive ADD COLUMN graph_id text;
CREATE UNIQUE INDEX ux_o365_admin_audit_logs_graph_id ON o365_admin_audit_logs (tenant_id, graph_id);
"""


def upgrade() -> None:
    op.execute(DDL)


def downgrade() -> None:
    op.execute("""
DROP INDEX ux_o365_admin_audit_logs_graph_id;
ALTER TABLE o365_admin_audit_logs_archive DROP COLUMN graph_id;
ALTER TABLE o365_admin_audit_logs DROP COLUMN graph_id;
DROP VIEW m365_mailboxes, m365_user_licenses;
DROP SEQUENCE m365_sync_gen;
DROP TABLE m365_sync_state, m365_contacts, m365_group_members, m365_groups, m365_users,
           m365_policies, m365_subscribed_skus, m365_domains, m365_tenants;
""")
