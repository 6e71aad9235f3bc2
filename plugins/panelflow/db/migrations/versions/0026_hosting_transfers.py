"""Web hosting: transfers between servers, database backups, load-balanced peer sync.

What TransferWork and PeerFileSyncWork keep (``panelflow.steps.hosting.transfers``,
``panelflow.steps.hosting.backups``, ``panelflow.steps.peer_sync``):

- ``hosting_servers.sftp_conn_id``: the Airflow ``sftp`` connection reaching a server's files
  (OpenSSH Server for Windows on a web or SQL Server host; the host key sits in the connection's
  ``host_key`` extra). Transfers copy site content through it; SQL Server backups are fetched
  through it from the server's staging folder. Producer: the panel (server setup).
- ``hosting_transfers``: the transfer queue. An order moves one site's files or one database from
  one server to another of the same role (a site and its database are two orders); the panel writes the order (``queued``) and TransferWork 1 moves it
  through ``copying_files`` → ``copying_database`` → ``switching`` → ``done`` (or ``failed``,
  with ``last_error``). Each stage is recorded before its work starts and after it ends, and each
  stage's work is idempotent (files land under a temporary name and are renamed; the restore drops
  and re-creates each table), so a run killed mid-way resumes at the recorded stage and ends with
  exactly one copy. ``target_path`` is the site's content folder on the new server. At most one
  open order per site and per database (partial unique indexes).
- ``backup_targets``: the remote backup servers: an SFTP connection (host key in it), the folder
  backups go under, which database server's databases it keeps (NULL: all), how often a database
  is backed up and how many days a backup is kept (90). Producer: the panel (backup settings).
- ``database_backups``: the panel's record of every backup sent: database, target, the run's
  clock it was taken for (``taken_for``), remote path, size, SHA-256 and compression. Unique per
  (database, target, taken_for), so a rerun of the same interval sends nothing twice; the
  clean-up deletes only files recorded here (never anything else it lists on the server), once
  ``taken_for`` is older than the target's retention measured from the run's data interval end.
  ``pending`` rows are being sent (a killed upload is redone under the same name); a row not sent
  within a day turns ``failed``; ``deleted`` rows keep the history.
- ``control_peers``: the load-balanced control servers: one enabled ``primary`` and its ``peer``s,
  each with the SFTP connection and folder its synced files live under and the psrp connection for
  its registry. ``last_checked_for``/``reachable``/``last_error``: PeerFileSyncWork 1's probe of
  this run (the plan 1.1 and 1.2 follow). Producer: the panel (load-balancing settings).
- ``peer_sync_items``: what is kept equal: ``file`` (a file or folder relative to the root folder)
  or ``registry`` (a key whose values are copied). Producer: the panel.
- ``peer_primary_files``: the primary's files as last read by PeerFileSyncWork 1 (size, mtime,
  SHA-256; a file is re-hashed only when its size or mtime moved).
- ``peer_sync_state``: per peer and synced thing (``file:<path>``, ``registry:<key>\\<name>``,
  ``state_service``, and ``sync``: the peer's last whole run of 1.2) the checksum or value the peer
  was last given, the peer file's size and mtime right after, when, and the last error. A peer
  that was down has old or missing rows and is caught up by the next run.
"""
from alembic import op

from panelflow.db.ddl import conn_id_check

revision = "0026"
down_revision = "0025"

DDL = rf"""
ALTER TABLE hosting_servers ADD COLUMN sftp_conn_id text {conn_id_check("sftp_conn_id")};

CREATE TABLE hosting_transfers (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    site_id bigint REFERENCES hosted_sites,
    database_id bigint REFERENCES hosted_databases,
    from_server_id bigint NOT NULL REFERENCES hosting_servers,   -- the site's web server / the database's server
    to_server_id bigint NOT NULL REFERENCES hosting_servers,
    target_path text,                                 -- the site's content folder on the new server
    stage text NOT NULL DEFAULT 'queued'
        CHECK (stage IN ('queued', 'copying_files', 'copying_database', 'switching', 'done', 'failed')),
    files_copied integer NOT NULL DEFAULT 0,
    bytes_copied bigint NOT NULL DEFAULT 0,
    tables_copied integer NOT NULL DEFAULT 0,
    requested_at timestamptz NOT NULL DEFAULT now(),
    started_at timestamptz,                           -- the run (its clock) that took it up
    stage_started_at timestamptz,                     -- when the current stage was entered (run clock)
    stage_times jsonb NOT NULL DEFAULT '{{}}',          -- stage → the run clock that finished it
    attempts integer NOT NULL DEFAULT 0,
    finished_at timestamptz,
    last_error text,
    CHECK (num_nonnulls(site_id, database_id) = 1),  -- one thing per order (a site and its database: two)
    CHECK (from_server_id <> to_server_id),
    CHECK (site_id IS NULL OR target_path IS NOT NULL)
);
CREATE UNIQUE INDEX ux_hosting_transfers_open_site ON hosting_transfers (site_id)
    WHERE site_id IS NOT NULL AND stage NOT IN ('done', 'failed');
CREATE UNIQUE INDEX ux_hosting_transfers_open_database ON hosting_transfers (database_id)
    WHERE database_id IS NOT NULL AND stage NOT IN ('done', 'failed');
CREATE INDEX ix_hosting_transfers_open ON hosting_transfers (id) WHERE stage NOT IN ('done', 'failed');

CREATE TABLE backup_targets (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL UNIQUE,
    sftp_conn_id text NOT NULL {conn_id_check("sftp_conn_id")},
    remote_folder text NOT NULL CHECK (remote_folder ~ '^/' AND remote_folder !~ '(^|/)\.\.?(/|$)'),
    db_server_id bigint REFERENCES hosting_servers,   -- NULL: every database server's databases
    every_hours integer NOT NULL DEFAULT 24 CHECK (every_hours > 0),
    retention_days integer NOT NULL DEFAULT 90 CHECK (retention_days > 0),
    enabled boolean NOT NULL DEFAULT true,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE database_backups (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    database_id bigint NOT NULL REFERENCES hosted_databases,
    target_id bigint NOT NULL REFERENCES backup_targets,
    taken_for timestamptz NOT NULL,                   -- the run's data interval end it was taken for
    remote_path text NOT NULL,
    compression text NOT NULL CHECK (compression IN ('gzip', 'mssql')),
    size_bytes bigint CHECK (size_bytes >= 0),
    sha256 text CHECK (sha256 ~ '^[0-9a-f]{{64}}$'),
    status text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'sent', 'failed', 'deleted')),
    attempts integer NOT NULL DEFAULT 0,
    sent_at timestamptz,
    deleted_at timestamptz,
    last_error text,
    UNIQUE (database_id, target_id, taken_for),
    UNIQUE (target_id, remote_path),
    CHECK (status <> 'sent' OR (size_bytes IS NOT NULL AND sha256 IS NOT NULL)),
    CHECK ((status = 'deleted') = (deleted_at IS NOT NULL))
);
CREATE INDEX ix_database_backups_expiry ON database_backups (taken_for, id) WHERE status IN ('sent', 'failed');
CREATE INDEX ix_database_backups_pending ON database_backups (taken_for, id) WHERE status = 'pending';

CREATE TABLE control_peers (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL UNIQUE,
    role text NOT NULL CHECK (role IN ('primary', 'peer')),
    sftp_conn_id text NOT NULL {conn_id_check("sftp_conn_id")},
    psrp_conn_id text {conn_id_check("psrp_conn_id")},
    root_folder text NOT NULL CHECK (root_folder ~ '^(/|[A-Za-z]:/)' AND root_folder !~ '(^|/)\.\.?(/|$)'),
    enabled boolean NOT NULL DEFAULT true,
    last_checked_for timestamptz,                     -- the run (its clock) that last probed it
    reachable boolean,
    last_error text
);
CREATE UNIQUE INDEX ux_control_peers_one_primary ON control_peers (role) WHERE role = 'primary' AND enabled;

CREATE TABLE peer_sync_items (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind text NOT NULL CHECK (kind IN ('file', 'registry')),
    path text NOT NULL,                               -- file: relative to root_folder; registry: HKLM:\…
    enabled boolean NOT NULL DEFAULT true,
    UNIQUE (kind, path),
    CHECK (kind <> 'file' OR (path !~ '^/' AND path !~ '(^|/)\.\.?(/|$)' AND path <> '')),
    CHECK (kind <> 'registry' OR path ~ '^HK(LM|CU):\\')
);

CREATE TABLE peer_primary_files (
    path text PRIMARY KEY,                            -- relative to the primary's root folder
    item_id bigint NOT NULL REFERENCES peer_sync_items ON DELETE CASCADE,
    size_bytes bigint NOT NULL,
    mtime bigint NOT NULL,
    sha256 text NOT NULL,
    scanned_for timestamptz NOT NULL                  -- the run that last saw it on the primary
);

CREATE TABLE peer_sync_state (
    peer_id bigint NOT NULL REFERENCES control_peers ON DELETE CASCADE,
    thing text NOT NULL,                              -- file:<path> | registry:<key>\<name> | state_service | sync
    checksum text,                                    -- SHA-256 of the file, or of the value given
    value jsonb,                                      -- registry/state service: what was set
    peer_size bigint,                                 -- the peer file's size and mtime right after the copy
    peer_mtime bigint,
    synced_at timestamptz,                            -- the run that made it equal
    last_error text,
    PRIMARY KEY (peer_id, thing)
);
"""


def upgrade() -> None:
    op.execute(DDL)


def downgrade() -> None:
    op.execute("DROP TABLE peer_sync_state, peer_primary_files, peer_sync_items, control_peers, database_backups,"
               " backup_targets, hosting_transfers")
    op.execute("ALTER TABLE hosting_servers DROP COLUMN sftp_conn_id")
