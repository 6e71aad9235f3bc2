"""Hyper-V hosts, VMs, disks, inventory and stats, server stats (reserved)

What HyperVHomeBackendThread, GroupActionWorkVPS, ServerStatsWork and the VPS half of
ProvisioningWork's threshold alerts keep (``panelflow.steps.hyperv``, ``panelflow.steps.server_stats``):

- ``hyperv_hosts``: the Hyper-V hosts the panel manages, each reached through the Airflow psrp
  connection named by ``conn_id`` (no secret here). ``server_id`` links the host to its ``servers``
  row (0007), where its CPU/memory/volume/service samples go for the monitors.
  ``vhd_archive_path`` is the folder a deleted VM's disks are moved to (and the only folder the
  archive clean-up may delete from): an absolute local path, never a drive root.
- ``hyperv_host_syncs``: per host and step, when it was last tried and synced, and the last error.
- ``hyperv_host_hardware`` / ``hyperv_host_nics``: the bare-metal inventory (Win32_ComputerSystem,
  Win32_BIOS, Win32_Processor, Win32_OperatingSystem, physical network adapters).
- ``hyperv_hypervisors``: Get-VMHost per host (logical processors, memory capacity, VM paths).
- ``hyperv_vms``: one row per VM, keyed by its Hyper-V GUID (a VM keeps it across live migration, so
  ``host_id`` moves with it). A VM no longer on its host is marked ``deleted_at``, never dropped:
  its customer/subscription link, stats and alerts stay readable.
- ``hyperv_vm_disks`` (Get-VMHardDiskDrive | Get-VHD, plus the physical media the file lives on),
  ``hyperv_vm_network_adapters``.
- ``hyperv_host_stats`` / ``hyperv_vm_stats``: samples keyed by (object, the run's clock), so a rerun
  adds nothing.
- ``hyperv_archived_vhds``: disks of deleted VMs moved to the host's archive folder, deleted from the
  host after ``vhd_archive_days``.
- ``vps_thresholds`` / ``vps_threshold_alerts``: CPU, memory and disk alert levels (per VPS, or the
  default row with ``vm_id`` NULL) and one alert row per crossing, cleared when back under.
- ``servers.psrp_conn_id``: the psrp connection ServerStatsWork samples a Windows server through.
"""
from alembic import op

from panelflow.db.ddl import ALERT_EPISODE, alert_episode_indexes, positive

revision = "0018"
down_revision = "0017"

DDL = rf"""
ALTER TABLE servers ADD COLUMN psrp_conn_id text;

CREATE TABLE hyperv_hosts (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL UNIQUE,                        -- the host's computer name (HV01)
    fqdn text NOT NULL,
    conn_id text NOT NULL,                            -- the Airflow psrp connection reaching this host
    server_id bigint REFERENCES servers ON DELETE SET NULL,
    cluster text,                                     -- failover cluster name, if clustered
    vhd_archive_path text NOT NULL
        CHECK (vhd_archive_path ~ '^[A-Za-z]:(\\[^\\/:*?"<>|]+)+$' AND vhd_archive_path !~ '\\\.\.?(\\|$)'),
    enabled boolean NOT NULL DEFAULT true,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE hyperv_host_syncs (
    host_id bigint NOT NULL REFERENCES hyperv_hosts ON DELETE CASCADE,
    task text NOT NULL,
    last_attempt_at timestamptz NOT NULL,
    last_synced_at timestamptz,
    last_error text,
    PRIMARY KEY (host_id, task)
);

CREATE TABLE hyperv_host_hardware (
    host_id bigint PRIMARY KEY REFERENCES hyperv_hosts ON DELETE CASCADE,
    manufacturer text,
    model text,
    serial_number text,
    bios_manufacturer text,
    bios_version text,
    bios_release_date timestamptz,
    cpu_model text,
    {positive("cpu_sockets", "cpu_cores", "cpu_logical_processors")}, {positive("memory_bytes", type_="bigint")},
    os_name text,
    os_version text,
    synced_at timestamptz NOT NULL,
    changed_at timestamptz NOT NULL
);

CREATE TABLE hyperv_host_nics (
    host_id bigint NOT NULL REFERENCES hyperv_hosts ON DELETE CASCADE,
    name text NOT NULL,                               -- "Ethernet 1"
    description text,                                 -- "Intel(R) Ethernet Controller X710 for 10GbE SFP+"
    mac_address text,
    link_speed_bps bigint,
    status text,
    synced_at timestamptz NOT NULL,
    PRIMARY KEY (host_id, name)
);

CREATE TABLE hyperv_hypervisors (
    host_id bigint PRIMARY KEY REFERENCES hyperv_hosts ON DELETE CASCADE,
    computer_name text NOT NULL,
    os_name text,
    os_version text,                                  -- "10.0.20348"
    default_vm_version text,                          -- "10.0"
    logical_processors integer NOT NULL CHECK (logical_processors > 0),
    memory_capacity_bytes bigint NOT NULL CHECK (memory_capacity_bytes > 0),
    vm_path text,
    vhd_path text,
    numa_spanning boolean,
    synced_at timestamptz NOT NULL,
    changed_at timestamptz NOT NULL
);

CREATE TABLE hyperv_vms (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    vm_guid uuid NOT NULL UNIQUE,
    host_id bigint NOT NULL REFERENCES hyperv_hosts ON DELETE CASCADE,
    name text NOT NULL,
    state text NOT NULL,                              -- Hyper-V VMState: Running, Off, Saved, Paused …
    generation smallint CHECK (generation IN (1, 2)),
    processor_count integer CHECK (processor_count > 0),
    memory_startup_bytes bigint,
    memory_assigned_bytes bigint,
    memory_demand_bytes bigint,
    dynamic_memory boolean,
    uptime_seconds bigint,
    version text,                                     -- configuration version ("10.0")
    config_path text,
    customer_id bigint REFERENCES customers ON DELETE SET NULL,
    subscription_id bigint REFERENCES subscriptions ON DELETE SET NULL,
    first_seen_at timestamptz NOT NULL,
    synced_at timestamptz NOT NULL,
    changed_at timestamptz NOT NULL,
    deleted_at timestamptz
);
CREATE INDEX ix_hyperv_vms_host ON hyperv_vms (host_id) WHERE deleted_at IS NULL;
CREATE INDEX ix_hyperv_vms_customer ON hyperv_vms (customer_id) WHERE customer_id IS NOT NULL;

CREATE TABLE hyperv_vm_disks (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    vm_id bigint NOT NULL REFERENCES hyperv_vms ON DELETE CASCADE,
    path text NOT NULL,
    controller_type text,                             -- IDE, SCSI
    controller_number integer,
    controller_location integer,
    vhd_type text CHECK (vhd_type IN ('Fixed', 'Dynamic', 'Differencing')),
    vhd_format text CHECK (vhd_format IN ('VHD', 'VHDX', 'VHDSet')),
    file_size_bytes bigint CHECK (file_size_bytes >= 0),
    size_bytes bigint CHECK (size_bytes >= 0),
    storage_type text CHECK (storage_type IN ('SSD', 'HDD', 'NVMe', 'SCM', 'Mixed', 'Unspecified', 'Network')),
    storage_pool text,
    storage_checked_at timestamptz,
    first_seen_at timestamptz NOT NULL,
    synced_at timestamptz NOT NULL,
    UNIQUE (vm_id, path)
);

CREATE TABLE hyperv_vm_network_adapters (
    vm_id bigint NOT NULL REFERENCES hyperv_vms ON DELETE CASCADE,
    adapter_id text NOT NULL,                         -- "Microsoft:<vm guid>\<adapter guid>"
    name text NOT NULL,
    switch_name text,
    mac_address text,
    dynamic_mac boolean,
    ip_addresses text[] NOT NULL DEFAULT '{{}}',
    vlan_id integer,
    synced_at timestamptz NOT NULL,
    PRIMARY KEY (vm_id, adapter_id)
);

CREATE TABLE hyperv_host_stats (
    host_id bigint NOT NULL REFERENCES hyperv_hosts ON DELETE CASCADE,
    sampled_at timestamptz NOT NULL,                  -- the run's clock
    cpu_percent numeric(5,2) CHECK (cpu_percent BETWEEN 0 AND 100),
    hypervisor_run_time_percent numeric(5,2) CHECK (hypervisor_run_time_percent BETWEEN 0 AND 100),
    memory_total_mb bigint,
    memory_available_mb bigint,
    vms_total integer NOT NULL,
    vms_running integer NOT NULL,
    PRIMARY KEY (host_id, sampled_at)
);

CREATE TABLE hyperv_vm_stats (
    vm_id bigint NOT NULL REFERENCES hyperv_vms ON DELETE CASCADE,
    sampled_at timestamptz NOT NULL,                  -- the run's clock
    state text NOT NULL,
    cpu_percent numeric(5,2) CHECK (cpu_percent BETWEEN 0 AND 100),
    memory_assigned_mb bigint,
    memory_demand_mb bigint,
    uptime_seconds bigint,
    PRIMARY KEY (vm_id, sampled_at)
);
CREATE INDEX ix_hyperv_vm_stats_sampled_at ON hyperv_vm_stats (sampled_at);

CREATE TABLE hyperv_archived_vhds (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    host_id bigint NOT NULL REFERENCES hyperv_hosts ON DELETE CASCADE,
    vm_guid uuid,
    vm_name text,
    original_path text NOT NULL,
    archive_path text NOT NULL,
    file_size_bytes bigint,
    archived_at timestamptz NOT NULL,
    status text NOT NULL DEFAULT 'archived' CHECK (status IN ('archived', 'deleted', 'refused')),
    deleted_at timestamptz,                           -- the run that removed the file (or found it gone)
    last_error text,
    UNIQUE (host_id, archive_path),
    CHECK ((status = 'deleted') = (deleted_at IS NOT NULL))
);
CREATE INDEX ix_hyperv_archived_vhds_due ON hyperv_archived_vhds (archived_at, id) WHERE status = 'archived';

-- vm_id NULL: the default for every VPS. A VPS row's NULL level falls back to the default's;
-- enabled = false on a VPS row silences it, on the default row it switches the defaults off.
CREATE TABLE vps_thresholds (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    vm_id bigint REFERENCES hyperv_vms ON DELETE CASCADE,
    cpu_percent numeric(5,2) CHECK (cpu_percent > 0 AND cpu_percent <= 100),
    memory_percent numeric(5,2) CHECK (memory_percent > 0 AND memory_percent <= 100),
    disk_percent numeric(5,2) CHECK (disk_percent > 0 AND disk_percent <= 100),
    enabled boolean NOT NULL DEFAULT true,
    UNIQUE NULLS NOT DISTINCT (vm_id)
);

CREATE TABLE vps_threshold_alerts (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    vm_id bigint NOT NULL REFERENCES hyperv_vms ON DELETE CASCADE,
    metric text NOT NULL CHECK (metric IN ('cpu', 'memory', 'disk')),
    threshold_percent numeric(5,2) NOT NULL,
    value_percent numeric(6,2) NOT NULL,              -- when it crossed
    detail text,                                      -- the disk, for a disk alert
    {ALERT_EPISODE}
);
{alert_episode_indexes("vps_threshold_alerts", "vm_id, metric")}
"""


def upgrade() -> None:
    op.execute(DDL)


def downgrade() -> None:
    op.execute("DROP TABLE vps_threshold_alerts, vps_thresholds, hyperv_archived_vhds, hyperv_vm_stats,"
               " hyperv_host_stats, hyperv_vm_network_adapters, hyperv_vm_disks, hyperv_vms, hyperv_hypervisors,"
               " hyperv_host_nics, hyperv_host_hardware, hyperv_host_syncs, hyperv_hosts")
    op.execute("ALTER TABLE servers DROP COLUMN psrp_conn_id")
