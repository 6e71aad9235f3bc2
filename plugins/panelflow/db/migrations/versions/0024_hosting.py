"""Web hosting (Hostmatic): servers, sites, databases and their users, FTP accounts, quotas, white-label URLs

What GroupActionWorkGeneral, DiskQuotaWork and ProvisioningWork's white-label bindings keep
(``panelflow.steps.hosting``), and what the other hosting threads (bandwidth, transfers, backups)
read:

- ``hosting_servers``: the web (IIS), database (MySQL/MariaDB, MSSQL) and file (FSRM) servers the
  panel hosts customers on, each reached through the Airflow connection named by ``conn_id`` (psrp
  for iis/mssql/windows, ``hosted_mysql`` for mysql; no secret here). Web servers also name the
  ``samba`` connection of the share holding their IIS W3C logs. Producer: the panel (server setup).
- ``hosted_sites``: one IIS site per row, created by the general group action ``create_site``
  (the panel inserts the row as ``pending`` with the job; the job fills ``iis_site_id`` and
  ``physical_path`` and sets it ``active``), suspended/deleted by its jobs. A deleted site keeps its
  row (``deleted_at``) so usage history stays readable. ``file_server_id`` is the server whose FSRM
  holds the site's content quota; NULL means the web server itself.
- ``hosted_databases`` / ``hosted_database_users``: customers' MySQL/MariaDB databases and their
  users, one row per name per server (MySQL user names are server-wide), written by the
  ``create_database`` / ``delete_database`` / ``create_database_user`` / ``delete_database_user``
  jobs. A re-created name reuses its row (status back to active). ``size_bytes`` is written by
  DiskQuotaWork from ``information_schema.TABLES``. (The AD-linked Hostmatic logins are
  ``hosting_database_users`` of 0019, a different thing.)
- ``hosted_ftp_accounts``: IIS FTP users of a site — local Windows accounts on the web server, with a
  home folder under the site's content, published on the server's FTP site (``ftp_site``, user
  isolation: virtual directory ``LocalUser/<user>``) — written by the ``create_ftp_account`` /
  ``delete_ftp_account`` jobs. Local accounts are per server, so a name is taken once per web server
  (checked by the job; the unique key is per site because a site may move between servers).
- ``hosted_site_quotas``: a site's disk quota in MB (the panel writes ``disk_quota_mb`` with a
  ``change_quota`` job; the job records what it applied to FSRM in ``applied_mb``/``applied_at``).
- ``hosted_site_disk_usage``: per site and DiskQuotaWork run (its clock) the FSRM usage of the
  site's folder; the per-subscription total (files + databases) goes to ``resource_usage_samples``
  (0009) as ``disk_space`` in MB, which QuotaOverUsedWork reads.
- ``white_label_urls``: a reseller's branded URL of the control panel: the host name, the IIS site
  on the web server it is bound to, and the certificate (thumbprint + store) of its HTTPS binding.
  Producer: the panel (reseller branding page) inserts the row with ``applied_at`` NULL and sets
  it NULL again when the certificate or site changes; ProvisioningWork step 35 applies it once and
  sets ``applied_at`` (or ``last_error``).
"""
from alembic import op

from panelflow.db.ddl import conn_id_check

revision = "0024"
down_revision = "0023"

DDL = rf"""
CREATE TABLE hosting_servers (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL UNIQUE,
    role text NOT NULL CHECK (role IN ('web', 'database', 'file')),
    engine text NOT NULL CHECK (engine IN ('iis', 'mysql', 'mssql', 'windows')),
    host text NOT NULL,
    conn_id text NOT NULL {conn_id_check("conn_id")},  -- psrp for iis/mssql/windows, hosted_mysql for mysql
    log_share_conn_id text {conn_id_check("log_share_conn_id")},  -- web: `samba` connection of the IIS log share
    log_folder text NOT NULL DEFAULT 'LogFiles',      -- folder inside that share: W3SVC<iis_site_id>\u_exYYMMDD.log
    content_root text,                                -- web/file: folder new sites' content goes under (D:\Sites)
    ftp_site text,                                    -- web: the IIS FTP site (user isolation) FTP accounts live on
    enabled boolean NOT NULL DEFAULT true,
    created_at timestamptz NOT NULL DEFAULT now(),
    CHECK ((role = 'database') = (engine IN ('mysql', 'mssql')))
);

CREATE TABLE hosted_sites (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subscription_id bigint NOT NULL REFERENCES subscriptions,
    web_server_id bigint NOT NULL REFERENCES hosting_servers,
    file_server_id bigint REFERENCES hosting_servers,  -- FSRM of the content; NULL: the web server
    name text NOT NULL UNIQUE,                        -- the site's primary host name
    iis_site_id integer,                              -- IIS site id (W3SVC<n>), known once created
    physical_path text,                               -- content folder on the web server
    app_pool text,                                    -- its application pool (created with the site)
    status text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'active', 'suspended', 'deleted')),
    created_at timestamptz NOT NULL DEFAULT now(),
    deleted_at timestamptz,
    UNIQUE (web_server_id, iis_site_id),
    CHECK ((status = 'deleted') = (deleted_at IS NOT NULL))
);
CREATE INDEX ix_hosted_sites_subscription ON hosted_sites (subscription_id);

CREATE TABLE hosted_databases (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subscription_id bigint NOT NULL REFERENCES subscriptions,
    db_server_id bigint NOT NULL REFERENCES hosting_servers,
    name text NOT NULL,
    status text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended', 'deleted')),
    size_bytes bigint CHECK (size_bytes >= 0),
    size_sampled_at timestamptz,                      -- the DiskQuotaWork run that measured size_bytes
    created_at timestamptz NOT NULL DEFAULT now(),
    deleted_at timestamptz,
    UNIQUE (db_server_id, name)
);
CREATE INDEX ix_hosted_databases_subscription ON hosted_databases (subscription_id);

CREATE TABLE hosted_database_users (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    database_id bigint NOT NULL REFERENCES hosted_databases,
    db_server_id bigint NOT NULL REFERENCES hosting_servers,
    user_name text NOT NULL,
    status text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'deleted')),
    created_at timestamptz NOT NULL DEFAULT now(),
    deleted_at timestamptz,
    UNIQUE (db_server_id, user_name)
);
CREATE INDEX ix_hosted_database_users_database ON hosted_database_users (database_id);

CREATE TABLE hosted_ftp_accounts (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    site_id bigint NOT NULL REFERENCES hosted_sites,
    user_name text NOT NULL,
    home_folder text NOT NULL DEFAULT '',             -- relative to the site's physical path
    status text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'deleted')),
    created_at timestamptz NOT NULL DEFAULT now(),
    deleted_at timestamptz,
    UNIQUE (site_id, user_name)
);

CREATE TABLE hosted_site_quotas (
    site_id bigint PRIMARY KEY REFERENCES hosted_sites,
    disk_quota_mb integer NOT NULL CHECK (disk_quota_mb > 0),
    applied_mb integer,                               -- what the last change_quota job set in FSRM
    applied_at timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE hosted_site_disk_usage (
    site_id bigint NOT NULL REFERENCES hosted_sites,
    sampled_at timestamptz NOT NULL,                  -- the DiskQuotaWork run's clock
    used_mb numeric NOT NULL CHECK (used_mb >= 0),    -- FSRM Usage of the site's folder
    quota_mb numeric CHECK (quota_mb >= 0),           -- FSRM Size (NULL: no quota on the folder)
    PRIMARY KEY (site_id, sampled_at)
);
CREATE INDEX ix_hosted_site_disk_usage_sampled_at ON hosted_site_disk_usage (sampled_at);

CREATE TABLE white_label_urls (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    host_name text NOT NULL UNIQUE CHECK (host_name = lower(host_name)),
    customer_id bigint REFERENCES customers,          -- the reseller the brand belongs to
    web_server_id bigint NOT NULL REFERENCES hosting_servers,
    iis_site_name text NOT NULL,                      -- the IIS site answering the URL (the panel's site)
    certificate_thumbprint text NOT NULL CHECK (certificate_thumbprint ~ '^[0-9A-F]{{40}}$'),
    certificate_store text NOT NULL DEFAULT 'My' CHECK (certificate_store IN ('My', 'WebHosting')),
    ip_address text NOT NULL DEFAULT '*',
    port integer NOT NULL DEFAULT 443 CHECK (port BETWEEN 1 AND 65535),
    created_at timestamptz NOT NULL DEFAULT now(),
    applied_at timestamptz,                           -- the run that bound it; NULL: to apply
    attempted_at timestamptz,
    last_error text
);
CREATE INDEX ix_white_label_urls_pending ON white_label_urls (web_server_id, id) WHERE applied_at IS NULL;
"""


def upgrade() -> None:
    op.execute(DDL)


def downgrade() -> None:
    op.execute("DROP TABLE white_label_urls, hosted_site_disk_usage, hosted_site_quotas, hosted_ftp_accounts,"
               " hosted_database_users, hosted_databases, hosted_sites, hosting_servers")
