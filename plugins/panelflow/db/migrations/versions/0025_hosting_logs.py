r"""Web hosting: IIS log files read over SMB for bandwidth, Work Folders shares and storage used

BandwidthQuotaWork (``panelflow.steps.hosting.bandwidth``) turns the web servers' IIS W3C logs
into traffic, WorkfolderSyncWork (``panelflow.steps.workfolders``) measures Work Folders storage;
both end as ``resource_usage_samples`` (0009) that QuotaOverUsedWork compares with the quotas.

Bandwidth. Each web server (``hosting_servers``, 0024) names the ``samba`` connection of the share
holding its IIS logs and the folder inside it (``log_folder``): ``W3SVC<iis_site_id>\u_exYYMMDD.log``
per site and UTC day, as IIS writes them.

- ``iis_log_files``: one row per log file seen, holding how far it has been read
  (``read_offset``: the byte after the last complete line counted) and the ``#Fields`` layout in
  effect there, so a run resumes exactly where the last stopped and each line is counted once. A
  half-written last line is not counted until its line end is there. A file is ``completed`` (never
  read again) once a newer log file exists for the same site, or it has not changed for a day; only
  then is a last line without a line end counted.
- ``site_bandwidth_daily``: per site and UTC day (IIS logs in UTC) the bytes sent (sc-bytes) and
  received (cs-bytes) and the requests. The step adds a file's increment here and advances the
  file's ``read_offset`` in the same transaction, conditionally on the offset it started from, so a
  crash, a retry or a second run at the same time never counts a line twice.
- Samples: per subscription, ``bandwidth`` in MB (1 MB = 1,048,576 bytes) = sent + received of its
  sites in the UTC calendar month of the run's clock, up to the clock's day, at the run's clock.

Work Folders. File servers (``hosting_servers`` with role ``file``, engine ``windows``) host the
sync shares:

- ``workfolder_users``: who uses Work Folders on which sync share of which server, and the
  subscription the storage counts against. Producer: the panel (the Work Folders page of a
  subscription inserts the row when it grants a user the share and sets ``removed_at`` when it takes
  it away). ``user_name`` is ``DOMAIN\alias`` as ``Get-SyncUserStatus -User`` wants it;
  ``user_principal_name`` names the user folder of a share whose folders are ``[user]@[domain]``.
- ``workfolder_shares``: the sync shares as ``Get-SyncShare`` last reported them (path, user folder
  naming, enabled), per server; ``missing_since`` once a share is no longer reported.
- ``workfolder_usage``: per user and run (its clock) the bytes and files in the user's folder of
  the share and the devices syncing it (``Get-SyncUserStatus``); a rerun replaces its own row.
- ``quota_resources`` gains ``workfolders_storage`` (MB): per subscription the sum of its users'
  folders, sampled at the run's clock.
"""
from alembic import op

revision = "0025"
down_revision = "0024"

DDL = r"""
CREATE TABLE iis_log_files (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    server_id bigint NOT NULL REFERENCES hosting_servers,
    site_id bigint NOT NULL REFERENCES hosted_sites,
    path text NOT NULL,                               -- inside the share: LogFiles/W3SVC3/u_ex261206.log
    read_offset bigint NOT NULL DEFAULT 0 CHECK (read_offset >= 0),   -- bytes counted so far
    size_seen bigint NOT NULL DEFAULT 0,              -- the file's size when last listed
    modified_at timestamptz,                          -- its last write time when last listed
    fields text,                                      -- the #Fields directive in effect at read_offset
    lines_read bigint NOT NULL DEFAULT 0,
    malformed_lines bigint NOT NULL DEFAULT 0,
    first_read_at timestamptz NOT NULL,               -- runs' clocks
    last_read_at timestamptz NOT NULL,
    completed_at timestamptz,                         -- NULL: may still grow
    UNIQUE (server_id, path)
);
CREATE INDEX ix_iis_log_files_open ON iis_log_files (server_id) WHERE completed_at IS NULL;

CREATE TABLE site_bandwidth_daily (
    site_id bigint NOT NULL REFERENCES hosted_sites,
    day date NOT NULL,                                -- UTC, as IIS logs
    bytes_sent bigint NOT NULL DEFAULT 0 CHECK (bytes_sent >= 0),          -- sc-bytes
    bytes_received bigint NOT NULL DEFAULT 0 CHECK (bytes_received >= 0),  -- cs-bytes
    requests bigint NOT NULL DEFAULT 0 CHECK (requests >= 0),
    updated_at timestamptz NOT NULL,                  -- the clock of the run that last added to it
    PRIMARY KEY (site_id, day)
);
CREATE INDEX ix_site_bandwidth_daily_day ON site_bandwidth_daily (day);

CREATE TABLE workfolder_users (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    file_server_id bigint NOT NULL REFERENCES hosting_servers,
    share_name text NOT NULL,                         -- the sync share (Get-SyncShare Name)
    user_name text NOT NULL CHECK (user_name ~ '^[^\\]+\\[^\\]+$'),   -- DOMAIN\alias
    user_principal_name text,                         -- alias@domain, for [user]@[domain] user folders
    subscription_id bigint NOT NULL REFERENCES subscriptions,
    created_at timestamptz NOT NULL DEFAULT now(),
    removed_at timestamptz                            -- the panel took the share away
);
CREATE UNIQUE INDEX ux_workfolder_users_active ON workfolder_users (file_server_id, lower(share_name), lower(user_name))
    WHERE removed_at IS NULL;
CREATE INDEX ix_workfolder_users_subscription ON workfolder_users (subscription_id);

CREATE TABLE workfolder_shares (
    file_server_id bigint NOT NULL REFERENCES hosting_servers,
    name text NOT NULL,
    path text NOT NULL,
    user_folder_name text NOT NULL,                   -- %username% or [user]@[domain]
    enabled boolean NOT NULL,
    seen_at timestamptz NOT NULL,                     -- the run that last found it
    missing_since timestamptz,                        -- the first run that no longer found it
    PRIMARY KEY (file_server_id, name)
);

CREATE TABLE workfolder_usage (
    workfolder_user_id bigint NOT NULL REFERENCES workfolder_users,
    sampled_at timestamptz NOT NULL,                  -- the run's clock
    used_bytes bigint NOT NULL CHECK (used_bytes >= 0),
    file_count bigint NOT NULL CHECK (file_count >= 0),
    folder_found boolean NOT NULL,                    -- false: no user folder yet (never synced): 0 bytes
    devices integer NOT NULL CHECK (devices >= 0),    -- Get-SyncUserStatus rows
    last_successful_sync timestamptz,
    PRIMARY KEY (workfolder_user_id, sampled_at)
);
CREATE INDEX ix_workfolder_usage_sampled_at ON workfolder_usage (sampled_at);

INSERT INTO quota_resources (code, name, unit) VALUES ('workfolders_storage', 'Work Folders storage', 'MB');
"""


def upgrade() -> None:
    op.execute(DDL)


def downgrade() -> None:
    op.execute("DELETE FROM resource_usage_samples WHERE resource = 'workfolders_storage'")
    op.execute("DELETE FROM quota_resources WHERE code = 'workfolders_storage'")
    op.execute("DROP TABLE workfolder_usage, workfolder_shares, workfolder_users, site_bandwidth_daily, iis_log_files")
