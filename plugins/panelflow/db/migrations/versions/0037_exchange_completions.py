"""Exchange and Hyper-V completions: signatures, mailbox load, database locations, usage reports, PST clean-up,
VM paths.

The model. Exchange and Hyper-V stay the source of truth; these tables keep what the panel reports,
bills and places new mailboxes by. A report is stored once per period: its key is (the object, the
run's day in the thread's time zone), written with ``INSERT … ON CONFLICT … DO UPDATE`` guarded by
the clock, so a rerun of a day leaves one row holding the latest answer and an older run never
overwrites a newer one. Usage for billing and quotas goes to ``resource_usage_samples`` (0009),
keyed by (subscription, resource, the run's clock).

Tables and columns, and their producers:

- ``exchange_organizations.subscription_id``: the hosted-Exchange subscription a tenant's usage is
  sampled for. Producer: the panel, when it provisions the organisation (panel-side writer); a
  tenant without one gets its usage report but no samples (named in the step's summary).
- ``exchange_usage_reports``: per organisation and day, the mailboxes Exchange reports in its OU by
  kind, their size and items (the SPLA and usage-billing report). Producer: UsageReportWork 1
  (``panelflow.steps.exchange.usage_reports.exchange_usage_report``), which also writes each panel
  mailbox's ``size_bytes`` / ``item_count`` / ``size_read_at`` and the samples ``mailboxes`` and
  ``mailbox_storage`` (MB).
- ``exchange_database_mailbox_sizes``: per mailbox database (by GUID) and day, its mailboxes and
  their average size. Producer: UsageReportWork 4 (``…usage_reports.sync_average_mailbox_sizes``).
- ``exchange_servers.pst_share_unc`` / ``pst_smb_conn_id``: the share a server's mailbox exports
  (New-MailboxExportRequest -FilePath) write PST files to, and the Airflow ``samba`` connection
  reaching it (no secret in the panel). Producer: staff, with the server (panel-side).
- ``exchange_pst_exports``: the exports UsageReportWork 3 cleaned up after the configured age — their
  request removed from Exchange (``request_removed_at``), then their PST file deleted over SMB
  (``deleted_at``); one row per export request (RequestGuid), kept as the record of the deletion.
  Producer: UsageReportWork 3 (``…exchange.pst_cleanup.delete_expired_pst_files``), from
  Get-MailboxExportRequestStatistics.
- ``exchange_mailboxes.database_guid`` / ``database_synced_at`` (with the existing ``database``):
  which database each mailbox lives in now (after moves). Producer: ProvisioningWork 23
  (``…exchange.database_locations.sync_mailbox_database_locations``).
- ``exchange_server_load``: per Exchange server, its active mailbox databases, their mailboxes and
  size from the latest database sample — what placement of new mailboxes reads. Producer:
  ProvisioningWork 20 (``…exchange.server_load.update_mailbox_server_load``), from
  ``exchange_database_stats`` (ExchangeDatabaseStatsWork).
- ``exchange_signature_usage``: per organisation, the signature (HTML disclaimer) transport rules
  applying to its senders. Producer: ProvisioningWork 10 (``…exchange.signatures``).
- ``hyperv_vm_path_changes``: every disk or configuration path of a VM seen moved (storage
  migration), once per VM, kind, slot and new path. Producer: ProvisioningWork 6
  (``…hyperv.vm_paths.update_vm_paths``), which also moves ``hyperv_vms.config_path`` and
  ``hyperv_vm_disks.path``.
- ``quota_resources`` gains ``vps_processors`` and ``vps_memory`` (MB): with ``disk_space`` the
  resources a VPS subscription's samples are taken for (``…hyperv.usage_samples``).
"""
from alembic import op

revision = "0037"
down_revision = "0036"

DDL = r"""
ALTER TABLE exchange_organizations ADD COLUMN subscription_id bigint REFERENCES subscriptions ON DELETE SET NULL;

ALTER TABLE exchange_mailboxes
    ADD COLUMN item_count bigint CHECK (item_count >= 0),
    ADD COLUMN size_read_at timestamptz,              -- the run that read size_bytes / item_count
    ADD COLUMN database_guid uuid,                    -- the database's Guid (database: its name)
    ADD COLUMN database_synced_at timestamptz;

CREATE TABLE exchange_usage_reports (
    organization_id bigint NOT NULL REFERENCES exchange_organizations ON DELETE CASCADE,
    report_date date NOT NULL,                        -- the run's day in the thread's time zone
    subscription_id bigint REFERENCES subscriptions ON DELETE SET NULL,
    mailboxes integer NOT NULL CHECK (mailboxes >= 0),
    user_mailboxes integer NOT NULL CHECK (user_mailboxes >= 0),
    shared_mailboxes integer NOT NULL CHECK (shared_mailboxes >= 0),
    resource_mailboxes integer NOT NULL CHECK (resource_mailboxes >= 0),      -- rooms and equipment
    total_item_size_bytes bigint NOT NULL CHECK (total_item_size_bytes >= 0),
    total_deleted_item_size_bytes bigint NOT NULL CHECK (total_deleted_item_size_bytes >= 0),
    item_count bigint NOT NULL CHECK (item_count >= 0),
    read_at timestamptz NOT NULL,                     -- the run's clock
    PRIMARY KEY (organization_id, report_date)
);

CREATE TABLE exchange_database_mailbox_sizes (
    database_guid uuid NOT NULL,
    report_date date NOT NULL,
    database_name text NOT NULL,
    exchange_server_id bigint REFERENCES exchange_servers ON DELETE SET NULL,   -- hosting its active copy
    mailboxes integer NOT NULL CHECK (mailboxes >= 0),
    total_item_size_bytes bigint NOT NULL CHECK (total_item_size_bytes >= 0),
    average_mailbox_size_bytes bigint CHECK (average_mailbox_size_bytes >= 0),   -- NULL: no mailbox
    read_at timestamptz NOT NULL,
    PRIMARY KEY (database_guid, report_date)
);

ALTER TABLE exchange_servers
    ADD COLUMN pst_share_unc text CHECK (pst_share_unc ~ '^\\\\[^\\]+\\[^\\]+'),   -- \\fs01\PST: where exports go
    ADD COLUMN pst_smb_conn_id text,                  -- the Airflow samba connection reaching that share
    ADD CHECK ((pst_share_unc IS NULL) = (pst_smb_conn_id IS NULL));

CREATE TABLE exchange_pst_exports (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    request_guid uuid NOT NULL UNIQUE,                -- the export request's RequestGuid
    exchange_server_id bigint REFERENCES exchange_servers ON DELETE SET NULL,
    request_identity text NOT NULL,
    smb_conn_id text NOT NULL,
    file_path text NOT NULL CHECK (file_path ~* '[.]pst$'),   -- under the share ('/'-separated, relative)
    completed_at timestamptz NOT NULL,                -- CompletionTimestamp: the retention counts from here
    request_removed_at timestamptz,                   -- the run that removed the request (NULL: removal failed)
    deleted_at timestamptz,                           -- the run that deleted the file (or found it gone)
    last_error text
);
CREATE INDEX ix_exchange_pst_exports_due ON exchange_pst_exports (completed_at, id)
    WHERE deleted_at IS NULL AND request_removed_at IS NOT NULL;

CREATE TABLE exchange_server_load (
    exchange_server_id bigint PRIMARY KEY REFERENCES exchange_servers ON DELETE CASCADE,
    databases integer NOT NULL,
    mounted_databases integer NOT NULL,
    mailboxes integer NOT NULL,
    database_size_bytes bigint NOT NULL,
    available_new_mailbox_space_bytes bigint NOT NULL,
    sampled_at timestamptz NOT NULL,                  -- the latest database sample counted
    updated_at timestamptz NOT NULL                   -- the run's clock
);

CREATE TABLE exchange_signature_usage (
    organization_id bigint NOT NULL REFERENCES exchange_organizations ON DELETE CASCADE,
    rule_guid uuid NOT NULL,                          -- the transport rule's Guid
    rule_name text NOT NULL,
    enabled boolean NOT NULL,
    location text,                                    -- ApplyHtmlDisclaimerLocation: Append, Prepend
    first_seen_at timestamptz NOT NULL,
    last_seen_at timestamptz NOT NULL,
    removed_at timestamptz,                           -- no longer reported by a run its server answered
    PRIMARY KEY (organization_id, rule_guid)
);

CREATE TABLE hyperv_vm_path_changes (
    vm_id bigint NOT NULL REFERENCES hyperv_vms ON DELETE CASCADE,
    kind text NOT NULL CHECK (kind IN ('configuration', 'disk')),
    slot text NOT NULL,                               -- '' for the configuration; "SCSI 0:1" for a disk
    old_path text NOT NULL,
    new_path text NOT NULL,
    changed_at timestamptz NOT NULL,                  -- the run's clock
    PRIMARY KEY (vm_id, kind, slot, new_path)
);

INSERT INTO quota_resources (code, name, unit) VALUES
    ('vps_processors', 'VPS virtual processors', 'vCPUs'),
    ('vps_memory', 'VPS memory', 'MB');
"""

DROP = """
DELETE FROM resource_usage_samples WHERE resource IN ('vps_processors', 'vps_memory');
DELETE FROM quota_resources WHERE code IN ('vps_processors', 'vps_memory');
DROP TABLE hyperv_vm_path_changes, exchange_signature_usage, exchange_server_load, exchange_pst_exports,
    exchange_database_mailbox_sizes, exchange_usage_reports;
ALTER TABLE exchange_mailboxes DROP COLUMN item_count, DROP COLUMN size_read_at, DROP COLUMN database_guid,
    DROP COLUMN database_synced_at;
ALTER TABLE exchange_servers DROP COLUMN pst_share_unc, DROP COLUMN pst_smb_conn_id;
ALTER TABLE exchange_organizations DROP COLUMN subscription_id;
"""


def upgrade() -> None:
    op.execute(DDL)


def downgrade() -> None:
    op.execute(DROP)
