"""SharePoint on-premises and Online: site collections, owners, storage, farm editions, portal usage reports.

Two worlds, one panel view. A site collection lives either on an on-premises **farm** (reached over
PowerShell remoting, the SharePoint snap-in) or in a Microsoft 365 **tenant** (SharePoint Online,
read through Microsoft Graph on the tenant's ``m365_tenants`` connection); exactly one of
``farm_id`` / ``tenant_id`` is set, and the URL — SharePoint's own key for a site collection — is
unique across both.

Producers:

- ``sharepoint_farms``: written by the panel (an operator adds a farm: its name and the ``psrp``
  connection of one of its servers); ProvisioningWork 37 (``update_sharepoint_editions``) writes
  ``edition``, ``version``, ``build_version``, ``products`` and ``edition_synced_at`` from
  ``(Get-SPFarm).BuildVersion`` / ``.Products``.
- ``sharepoint_online_tenants``: written by the panel — the tenants whose SharePoint Online the
  panel manages (opt-in: an app consented for the directory need not hold ``Sites.Read.All`` and
  ``Reports.Read.All``). SyncFromBackendWork 2 records each tenant's last sync and error on it.
- ``sharepoint_site_collections``: SyncFromBackendWork 2 (``sync_sharepoint_data``) adds, changes
  and marks gone (``deleted_at``) the sites it lists; GroupActionWorkSP (the ``sp`` jobs) writes the
  sites it creates, re-quotas, locks or deletes. ``customer_id`` / ``subscription_id`` are the
  panel's (set by the create job or the panel); the sync never overwrites them.
- ``sharepoint_usage_reports``: UsageReportWork 5 (``sharepoint_usage_report``), one row per source
  (farm or tenant), calendar month and site — UNIQUE, so a rerun of the month adds nothing.
- ``resource_usage_samples`` (0009) rows of resource ``sharepoint_storage`` (MB, already in
  ``quota_resources``): SyncFromBackendWork 2, per subscription at the run's clock.
"""
from alembic import op

revision = "0033"
down_revision = "0032"

DDL = """
CREATE TABLE sharepoint_farms (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL UNIQUE,
    conn_id text NOT NULL,                            -- psrp connection of a farm server (the panel's)
    enabled boolean NOT NULL DEFAULT true,
    edition text,                                     -- 'Foundation' | 'Standard' | 'Enterprise' (step 37)
    version text,                                     -- '2013', '2016', '2019', 'Subscription Edition'
    build_version text,
    products text[],                                  -- (Get-SPFarm).Products: the SKU GUIDs installed
    edition_synced_at timestamptz,
    edition_changed_at timestamptz,
    synced_at timestamptz,                            -- the last run that listed its site collections
    last_error text,
    last_error_at timestamptz
);

CREATE TABLE sharepoint_online_tenants (
    tenant_id uuid PRIMARY KEY REFERENCES m365_tenants ON DELETE CASCADE,
    enabled boolean NOT NULL DEFAULT true,
    synced_at timestamptz,
    last_error text,
    last_error_at timestamptz
);

CREATE TABLE sharepoint_site_collections (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    farm_id bigint REFERENCES sharepoint_farms ON DELETE CASCADE,
    tenant_id uuid REFERENCES m365_tenants ON DELETE CASCADE,
    url text NOT NULL UNIQUE,                         -- lower-cased, no trailing slash
    site_id text,                                     -- SPSite.ID (on-premises) or Graph's site id
    title text,
    customer_id bigint REFERENCES customers,
    subscription_id bigint REFERENCES subscriptions,
    owners text[] NOT NULL DEFAULT '{}',              -- login names (on-premises) or UPNs / e-mails (Online)
    template text,
    quota_mb numeric CHECK (quota_mb >= 0),           -- NULL: no quota
    storage_used_mb numeric CHECK (storage_used_mb >= 0),
    lock_state text,                                  -- Unlock | NoAdditions | ReadOnly | NoAccess (on-premises)
    first_seen_at timestamptz NOT NULL,
    synced_at timestamptz NOT NULL,
    changed_at timestamptz NOT NULL,
    deleted_at timestamptz,
    CHECK ((farm_id IS NULL) <> (tenant_id IS NULL))
);
CREATE INDEX ix_sharepoint_sites_farm ON sharepoint_site_collections (farm_id) WHERE farm_id IS NOT NULL;
CREATE INDEX ix_sharepoint_sites_tenant ON sharepoint_site_collections (tenant_id) WHERE tenant_id IS NOT NULL;
CREATE INDEX ix_sharepoint_sites_subscription ON sharepoint_site_collections (subscription_id)
    WHERE subscription_id IS NOT NULL AND deleted_at IS NULL;

CREATE TABLE sharepoint_usage_reports (
    farm_id bigint REFERENCES sharepoint_farms ON DELETE CASCADE,
    tenant_id uuid REFERENCES m365_tenants ON DELETE CASCADE,
    month date NOT NULL CHECK (extract(day FROM month) = 1),
    site_url text NOT NULL,
    site_id text,
    owner text,
    template text,
    storage_used_mb numeric,
    storage_allocated_mb numeric,
    file_count bigint,
    active_file_count bigint,
    page_view_count bigint,                           -- Online: Page View Count; on-premises: Usage.Hits
    visited_page_count bigint,                        -- Online: Visited Page Count; on-premises: Usage.Visits
    last_activity_on date,
    report_refresh_on date,                           -- Online: the report's Report Refresh Date
    recorded_at timestamptz NOT NULL,                 -- the run's clock
    CHECK ((farm_id IS NULL) <> (tenant_id IS NULL)),
    UNIQUE NULLS NOT DISTINCT (farm_id, tenant_id, month, site_url)
);
"""


def upgrade() -> None:
    op.execute(DDL)


def downgrade() -> None:
    op.execute("DROP TABLE sharepoint_usage_reports, sharepoint_site_collections, sharepoint_online_tenants,"
               " sharepoint_farms")
