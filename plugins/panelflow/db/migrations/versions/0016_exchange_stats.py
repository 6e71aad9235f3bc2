"""Exchange servers, databases, volumes, services, CPU/memory, mobile devices, mail flow, migration batches

``exchange_servers`` is the list of Exchange servers the stats threads reach (each row's
``conn_id`` names its psrp connection); the group-action threads use it too.

Where the monitored-server tables of 0007 fit, the Exchange stats threads write there, so the
CPU, memory, disk and services monitors read Exchange machines like any other server: an
Exchange server is linked to its ``servers`` row by ``exchange_servers.server_id`` (the stats
steps link or create it), and its samples go to ``server_stats`` (CPU, memory),
``server_volume_stats`` (disk) and ``server_services`` (Windows services). The tables below hold
only what is Exchange's own:

- ``exchange_server_inventory``: Get-ExchangeServer (edition, build, roles, site) and the machine
  (OS, CPU, memory), one row per server, replaced at each read;
- ``exchange_service_health``: Test-ServiceHealth per server role — which required services are
  not running (the latest answer);
- ``exchange_volumes``: each volume's latest size and which databases' files and logs it holds;
- ``exchange_databases`` / ``exchange_database_stats``: the mailbox databases (by GUID, as they
  move between servers) and one sample per database and run;
- ``exchange_mobile_devices`` / ``exchange_mobile_device_reports``: ActiveSync/Outlook devices per
  mailbox (a device no longer reported is kept, marked ``removed_at``), and the daily report per
  organisation (its CSV kept with it);
- ``exchange_message_tracking`` / ``exchange_mail_flow_hourly``: message-tracking events, one row
  per event and recipient, unique on what identifies the event on its server, and the hourly
  totals per sender domain and event derived from them;
- ``exchange_migration_batches`` / ``exchange_migration_failures``: migration batches (by batch
  GUID) and the users that failed in each.
"""
from alembic import op

from panelflow.db.ddl import positive

revision = "0016"
down_revision = "0015"


SERVERS = """
CREATE TABLE exchange_servers (
    id bigserial PRIMARY KEY,
    name text NOT NULL UNIQUE,              -- Get-ExchangeServer Name (NetBIOS name)
    fqdn text NOT NULL,
    conn_id text NOT NULL,                  -- the Airflow psrp connection reaching this server
    roles text[] NOT NULL DEFAULT '{}',     -- Mailbox, ClientAccess, Edge …
    server_id bigint REFERENCES servers ON DELETE SET NULL,   -- the same machine in the monitored servers (0007)
    enabled boolean NOT NULL DEFAULT true,
    created_at timestamptz NOT NULL DEFAULT now()
);
"""

STATS = f"""
CREATE TABLE exchange_server_inventory (
    exchange_server_id bigint PRIMARY KEY REFERENCES exchange_servers ON DELETE CASCADE,
    fqdn text,
    edition text,                           -- Enterprise, Standard, StandardEvaluation
    admin_display_version text,             -- "Version 15.2 (Build 1544.4)"
    build text,                             -- 15.2.1544.4
    server_roles text[] NOT NULL DEFAULT '{{}}',
    site text,                              -- corp.example/Configuration/Sites/London
    os_caption text,
    os_version text,
    os_last_boot_at timestamptz,
    manufacturer text,
    model text,
    processor_name text,
    {positive("processor_sockets", "processor_cores", "logical_processors")}, {positive("memory_bytes", type_="bigint")},
    read_at timestamptz NOT NULL            -- the run's clock
);

CREATE TABLE exchange_service_health (
    exchange_server_id bigint NOT NULL REFERENCES exchange_servers ON DELETE CASCADE,
    role text NOT NULL,                     -- "Mailbox Server Role", "Client Access Server Role" …
    required_services_running boolean NOT NULL,
    services_running text[] NOT NULL DEFAULT '{{}}',
    services_not_running text[] NOT NULL DEFAULT '{{}}',
    sampled_at timestamptz NOT NULL,
    PRIMARY KEY (exchange_server_id, role)
);

CREATE TABLE exchange_volumes (
    exchange_server_id bigint NOT NULL REFERENCES exchange_servers ON DELETE CASCADE,
    volume text NOT NULL,                   -- as in server_volume_stats: "C:", "C:\\ExchangeVolumes\\Vol1"
    label text,
    file_system text,
    size_bytes bigint NOT NULL CHECK (size_bytes > 0),
    free_bytes bigint NOT NULL CHECK (free_bytes >= 0),
    database_files text[] NOT NULL DEFAULT '{{}}',   -- databases whose .edb file is on the volume
    database_logs text[] NOT NULL DEFAULT '{{}}',    -- databases whose transaction logs are on it
    sampled_at timestamptz NOT NULL,
    PRIMARY KEY (exchange_server_id, volume)
);

CREATE TABLE exchange_databases (
    id bigserial PRIMARY KEY,
    guid uuid NOT NULL UNIQUE,
    name text NOT NULL,
    exchange_server_id bigint REFERENCES exchange_servers ON DELETE SET NULL,  -- hosting its active copy when last read
    edb_file_path text,
    log_folder_path text,
    circular_logging boolean NOT NULL,
    mounted boolean NOT NULL,
    last_full_backup_at timestamptz,
    last_incremental_backup_at timestamptz,
    first_seen_at timestamptz NOT NULL,
    last_seen_at timestamptz NOT NULL
);

CREATE TABLE exchange_database_stats (
    database_id bigint NOT NULL REFERENCES exchange_databases ON DELETE CASCADE,
    sampled_at timestamptz NOT NULL,        -- the run's clock
    exchange_server_id bigint REFERENCES exchange_servers ON DELETE SET NULL,
    mounted boolean NOT NULL,
    size_bytes bigint CHECK (size_bytes >= 0),                      -- NULL while dismounted
    available_new_mailbox_space_bytes bigint CHECK (available_new_mailbox_space_bytes >= 0),
    mailbox_count integer NOT NULL CHECK (mailbox_count >= 0),
    PRIMARY KEY (database_id, sampled_at)
);
CREATE INDEX ix_exchange_database_stats_sampled_at ON exchange_database_stats (sampled_at);

CREATE TABLE exchange_mobile_devices (
    id bigserial PRIMARY KEY,
    mailbox_guid uuid NOT NULL,             -- the mailbox's ExchangeGuid (stable across renames)
    device_id text NOT NULL,                -- ActiveSync DeviceId, unique within a mailbox
    device_guid uuid NOT NULL,              -- the partnership's AD object (new if the device re-partners)
    exchange_server_id bigint REFERENCES exchange_servers ON DELETE SET NULL,
    mailbox text NOT NULL,                  -- primary SMTP address
    mailbox_display_name text,
    organization text NOT NULL,             -- the mailbox's organisation (its OU)
    device_type text,
    device_model text,
    device_os text,
    device_user_agent text,
    device_friendly_name text,
    first_sync_at timestamptz,
    last_success_sync_at timestamptz,
    status text,                            -- DeviceOk, DeviceDiscovered …
    access_state text,                      -- Allowed, Blocked, Quarantined, DeviceDiscovery
    first_seen_at timestamptz NOT NULL,
    last_seen_at timestamptz NOT NULL,
    removed_at timestamptz,                 -- no longer reported by a run in which every server answered
    UNIQUE (mailbox_guid, device_id)
);
CREATE INDEX ix_exchange_mobile_devices_organization ON exchange_mobile_devices (organization) WHERE removed_at IS NULL;

CREATE TABLE exchange_mobile_device_reports (
    report_date date NOT NULL,
    organization text NOT NULL,
    mailboxes integer NOT NULL,
    devices integer NOT NULL,
    active_devices integer NOT NULL,        -- synced within the report's activity window
    blocked_devices integer NOT NULL,
    quarantined_devices integer NOT NULL,
    device_types jsonb NOT NULL,            -- {{"iPhone": 3, "Outlook": 2}}
    csv text NOT NULL,
    created_at timestamptz NOT NULL,        -- the run's clock
    PRIMARY KEY (report_date, organization)
);

CREATE TABLE exchange_message_tracking (
    exchange_server_id bigint NOT NULL REFERENCES exchange_servers ON DELETE CASCADE,
    logged_at timestamptz NOT NULL,
    event_id text NOT NULL,                 -- RECEIVE, DELIVER, SEND, FAIL, DSN, DEFER …
    source text,                            -- SMTP, STOREDRIVER, ROUTING, AGENT …
    internal_message_id bigint NOT NULL,    -- unique per message on its server
    recipient text NOT NULL,                -- one row per recipient; '' for an event without one
    message_id text,
    sender text,
    sender_domain text NOT NULL,            -- '' for a null sender (DSN)
    message_subject text,
    total_bytes bigint,
    recipient_count integer NOT NULL,
    server_hostname text,
    PRIMARY KEY (exchange_server_id, internal_message_id, event_id, recipient, logged_at)
);
CREATE INDEX ix_exchange_message_tracking_logged_at ON exchange_message_tracking (logged_at);

CREATE TABLE exchange_mail_flow_hourly (
    hour timestamptz NOT NULL,              -- start of the UTC hour
    sender_domain text NOT NULL,
    event_id text NOT NULL,
    events integer NOT NULL,
    messages integer NOT NULL,
    recipients integer NOT NULL,
    total_bytes bigint NOT NULL,            -- over distinct messages
    PRIMARY KEY (hour, sender_domain, event_id)
);

CREATE TABLE exchange_migration_batches (
    id bigserial PRIMARY KEY,
    batch_guid uuid NOT NULL UNIQUE,
    identity text NOT NULL,
    exchange_server_id bigint REFERENCES exchange_servers ON DELETE SET NULL,
    customer_id bigint REFERENCES customers ON DELETE SET NULL,     -- the panel's customer, when the panel made it
    migration_type text,
    status text NOT NULL,                   -- Get-MigrationBatch Status: Syncing, Synced, Completed, Failed …
    total_count integer NOT NULL DEFAULT 0,
    synced_count integer NOT NULL DEFAULT 0,
    finalized_count integer NOT NULL DEFAULT 0,
    failed_count integer NOT NULL DEFAULT 0,
    notification_emails text[] NOT NULL DEFAULT '{{}}',
    exchange_created_at timestamptz,
    last_synced_at timestamptz,
    finalized_at timestamptz,
    first_seen_at timestamptz NOT NULL,
    last_seen_at timestamptz NOT NULL,
    status_changed_at timestamptz NOT NULL
);

CREATE TABLE exchange_migration_failures (
    batch_id bigint NOT NULL REFERENCES exchange_migration_batches ON DELETE CASCADE,
    mailbox text NOT NULL,
    status text,
    error_summary text,
    last_successful_sync_at timestamptz,
    seen_at timestamptz NOT NULL,
    PRIMARY KEY (batch_id, mailbox)
);
"""

STATS_TABLES = ("exchange_migration_failures", "exchange_migration_batches", "exchange_mail_flow_hourly",
                "exchange_message_tracking", "exchange_mobile_device_reports", "exchange_mobile_devices",
                "exchange_database_stats", "exchange_databases", "exchange_volumes", "exchange_service_health",
                "exchange_server_inventory")


def upgrade() -> None:
    op.execute(SERVERS)
    op.execute(STATS)


def downgrade() -> None:
    op.execute("DROP TABLE " + ", ".join(STATS_TABLES))
    op.execute("DROP TABLE exchange_servers")
