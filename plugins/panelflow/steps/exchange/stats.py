"""Exchange server statistics: what the Exchange machines and their databases report.

Threads and steps (catalog ``exchange.yaml``):

- ExchangeCPUMemoryStatsWork → :func:`sync_cpu_memory_stats`
- ExchangeDatabaseStatsWork → :func:`sync_mailbox_database_stats`
- ExchangeServiceStatsWork → :func:`read_service_stats`, :func:`read_inventory_details`
- ExchangeVolumeStatsWork → :func:`read_volume_stats`

**Where it goes.** CPU/memory, volumes and services of an Exchange machine go to the monitored
servers' tables of 0007 (``server_stats``, ``server_volume_stats``, ``server_services``), so the
monitors read Exchange servers like any other; the ``servers`` row is found by name or host
(``exchange_servers.server_id``), or created. The rest has its own tables (0016).

**Clock.** ``interval.end`` stamps every sample, so a rerun of a run adds nothing: samples are
unique per server (or database) and clock.
"""

from __future__ import annotations

import re
from uuid import UUID

from pydantic import Field

from panelflow.hooks.powershell import PowerShellOutputError, parse_records
from panelflow.step import StepReport

from ._backend import ByteCount, ExchangeServer, Record, Texts, UtcTime, as_json, every_server

SNAPSHOT_SAMPLE_INTERVAL = 2         # seconds between counter samples
SNAPSHOT_SAMPLES = 3                 # counter samples averaged per reading


def _mb(n: int) -> int:
    return n // (1024 * 1024)


def _one(rows: list, script: str) -> dict:
    """The single object a script prints (a reading, not a list of records)."""
    if len(rows) != 1 or not isinstance(rows[0], dict):
        raise PowerShellOutputError(f"{script}: expected one object, got {len(rows)} item(s)")
    return rows[0]


def _monitored_server(conn, server: ExchangeServer) -> int:
    """The ``servers`` row (0007) of this Exchange machine: linked, found by name or host, or created."""
    if server.server_id is not None:
        return server.server_id
    found = conn.execute(
        "SELECT id FROM servers WHERE lower(name) = lower(%(name)s) OR lower(host) = lower(%(fqdn)s)"
        " ORDER BY lower(name) = lower(%(name)s) DESC, id LIMIT 1",
        {"name": server.name, "fqdn": server.fqdn}).fetchone()
    if found is None:
        found = conn.execute("INSERT INTO servers (name, role, host) VALUES (%s, 'remote', %s)"
                             " ON CONFLICT (name) DO UPDATE SET host = servers.host RETURNING id",
                             (server.name, server.fqdn)).fetchone()
    conn.execute("UPDATE exchange_servers SET server_id = %s WHERE id = %s AND server_id IS NULL",
                 (found[0], server.id))
    return found[0]


# -- 1. CPU and memory ------------------------------------------------------------------------------

CPU_COUNTER = "\\processor(_total)\\% processor time"
AVAILABLE_MEMORY_COUNTER = "\\memory\\available mbytes"


class CounterSample(Record):
    Path: str
    CookedValue: float = Field(ge=0)
    Timestamp: UtcTime = None


class CounterReading(Record):
    ComputerName: str
    TotalPhysicalMemory: int = Field(gt=0)
    Samples: list[CounterSample] = Field(min_length=1)

    def average(self, counter: str) -> float | None:
        values = [s.CookedValue for s in self.Samples if s.Path.lower().endswith(counter)]
        return sum(values) / len(values) if values else None


def sync_cpu_memory_stats(panel_db, interval, params, log) -> dict:
    """Sync exchange CPU and Memory stats: one ``server_stats`` sample per server, keyed by the run's clock.

    CPU is the mean of the samples of ``\\Processor(_Total)\\% Processor Time``; used memory is the
    installed memory less the mean ``\\Memory\\Available MBytes``.
    """
    params = params or {}
    at = interval.end
    report = StepReport().zero("samples_written")
    arguments = {"SampleInterval": int(params.get("exchange_counter_sample_interval", SNAPSHOT_SAMPLE_INTERVAL)),
                 "MaxSamples": int(params.get("exchange_counter_samples", SNAPSHOT_SAMPLES))}

    def work(conn, hook, server):
        rows = hook.run_script("exchange/get_exchange_counters", arguments)
        readings = parse_records(CounterReading, rows, report, "counter reading")
        if not readings:
            return
        reading = readings[0]
        cpu, available = reading.average(CPU_COUNTER), reading.average(AVAILABLE_MEMORY_COUNTER)
        if cpu is None and available is None:
            report.skip("neither the CPU nor the memory counter was sampled", f"server {server.name}")
            return
        total_mb = _mb(reading.TotalPhysicalMemory)
        used_mb = None if available is None else max(0, total_mb - round(available))
        with conn.transaction():
            server_id = _monitored_server(conn, server)
            written = conn.execute(
                "INSERT INTO server_stats (server_id, sampled_at, cpu_percent, memory_total_mb, memory_used_mb)"
                " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (server_id, sampled_at) DO NOTHING",
                (server_id, at, None if cpu is None else round(min(cpu, 100.0), 2), total_mb, used_mb)).rowcount
        report.add("samples_written", written)

    return every_server(panel_db, report, log, work)


# -- 2. mailbox databases ---------------------------------------------------------------------------

class MailboxDatabase(Record):
    Name: str = Field(min_length=1)
    Guid: UUID
    Server: str
    Mounted: bool
    DatabaseSize: ByteCount = None
    AvailableNewMailboxSpace: ByteCount = None
    MailboxCount: int = Field(ge=0)
    LastFullBackup: UtcTime = None
    LastIncrementalBackup: UtcTime = None
    EdbFilePath: str | None = None
    LogFolderPath: str | None = None
    CircularLoggingEnabled: bool


_DATABASES = """
WITH r AS (
    SELECT * FROM jsonb_to_recordset(%(rows)s::jsonb) AS r(
        guid uuid, name text, mounted boolean, size_bytes bigint, available_bytes bigint, mailbox_count integer,
        last_full_backup_at timestamptz, last_incremental_backup_at timestamptz, edb_file_path text,
        log_folder_path text, circular_logging boolean)
), db AS (
    INSERT INTO exchange_databases (guid, name, exchange_server_id, edb_file_path, log_folder_path, circular_logging,
                                    mounted, last_full_backup_at, last_incremental_backup_at, first_seen_at, last_seen_at)
    SELECT guid, name, %(server)s, edb_file_path, log_folder_path, circular_logging, mounted, last_full_backup_at,
           last_incremental_backup_at, %(at)s, %(at)s
    FROM r
    ON CONFLICT (guid) DO UPDATE SET
        name = EXCLUDED.name, exchange_server_id = EXCLUDED.exchange_server_id,
        edb_file_path = EXCLUDED.edb_file_path, log_folder_path = EXCLUDED.log_folder_path,
        circular_logging = EXCLUDED.circular_logging, mounted = EXCLUDED.mounted,
        last_full_backup_at = EXCLUDED.last_full_backup_at,
        last_incremental_backup_at = EXCLUDED.last_incremental_backup_at,
        last_seen_at = greatest(exchange_databases.last_seen_at, EXCLUDED.last_seen_at)
    RETURNING id, guid
)
INSERT INTO exchange_database_stats (database_id, sampled_at, exchange_server_id, mounted, size_bytes,
                                     available_new_mailbox_space_bytes, mailbox_count)
SELECT db.id, %(at)s, %(server)s, r.mounted, r.size_bytes, r.available_bytes, r.mailbox_count
FROM db JOIN r USING (guid)
ON CONFLICT (database_id, sampled_at) DO NOTHING
"""


def sync_mailbox_database_stats(panel_db, interval, log) -> dict:
    """Sync exchange mailbox database stats: each database upserted (by GUID), one sample per run.

    A database is read from the server holding its active copy (the script filters on it), so a
    DAG's database is sampled once per run whichever servers hold copies.
    """
    at = interval.end
    report = StepReport().zero("databases", "stats_written")

    def work(conn, hook, server):
        rows = hook.run_script("exchange/get_mailbox_database_stats", {"Server": server.name})
        databases = {d.Guid: d for d in parse_records(MailboxDatabase, rows, report, "mailbox database")}
        report.add("databases", len(databases))
        if not databases:
            return
        records = [{"guid": str(d.Guid), "name": d.Name, "mounted": d.Mounted, "size_bytes": d.DatabaseSize,
                    "available_bytes": d.AvailableNewMailboxSpace, "mailbox_count": d.MailboxCount,
                    "last_full_backup_at": d.LastFullBackup, "last_incremental_backup_at": d.LastIncrementalBackup,
                    "edb_file_path": d.EdbFilePath, "log_folder_path": d.LogFolderPath,
                    "circular_logging": d.CircularLoggingEnabled} for d in databases.values()]
        with conn.transaction():
            written = conn.execute(_DATABASES, {"rows": as_json(records), "server": server.id, "at": at}).rowcount
        report.add("stats_written", written)

    return every_server(panel_db, report, log, work)


# -- 3. services and inventory ----------------------------------------------------------------------

SERVICE_STATES = {"running": "running", "stopped": "stopped", "paused": "paused", "startpending": "starting",
                  "continuepending": "starting", "stoppending": "stopping", "pausepending": "stopping"}


class ServiceState(Record):
    Name: str = Field(min_length=1)
    DisplayName: str | None = None
    Status: str = Field(min_length=1)
    StartType: str | None = None

    @property
    def state(self) -> str:
        return SERVICE_STATES.get(self.Status.lower(), "unknown")


class RoleHealth(Record):
    Role: str = Field(min_length=1)
    RequiredServicesRunning: bool
    ServicesRunning: Texts = []
    ServicesNotRunning: Texts = []


_SERVICES = """
INSERT INTO server_services (server_id, service_name, display_name, state, sampled_at)
SELECT %(server)s, r.name, r.display_name, r.state, %(at)s
FROM jsonb_to_recordset(%(rows)s::jsonb) AS r(name text, display_name text, state text)
ON CONFLICT (server_id, service_name) DO UPDATE SET
    display_name = EXCLUDED.display_name, state = EXCLUDED.state, sampled_at = EXCLUDED.sampled_at
WHERE server_services.sampled_at <= EXCLUDED.sampled_at
"""

_HEALTH = """
WITH r AS (
    SELECT * FROM jsonb_to_recordset(%(rows)s::jsonb)
        AS r(role text, required_services_running boolean, services_running text[], services_not_running text[])
), gone AS (
    DELETE FROM exchange_service_health h
    WHERE h.exchange_server_id = %(server)s AND h.sampled_at <= %(at)s AND h.role NOT IN (SELECT role FROM r)
)
INSERT INTO exchange_service_health (exchange_server_id, role, required_services_running, services_running,
                                     services_not_running, sampled_at)
SELECT %(server)s, role, required_services_running, services_running, services_not_running, %(at)s FROM r
ON CONFLICT (exchange_server_id, role) DO UPDATE SET
    required_services_running = EXCLUDED.required_services_running, services_running = EXCLUDED.services_running,
    services_not_running = EXCLUDED.services_not_running, sampled_at = EXCLUDED.sampled_at
WHERE exchange_service_health.sampled_at <= EXCLUDED.sampled_at
"""


def read_service_stats(panel_db, interval, log) -> dict:
    """Read server services stats: the Exchange services' states into ``server_services``, and
    Test-ServiceHealth's verdict per role into ``exchange_service_health``.

    A service no longer listed keeps its last row: the services monitor then sees it as "not
    reported since", which is what happened.
    """
    at = interval.end
    report = StepReport().zero("services", "not_running", "roles_unhealthy")

    def work(conn, hook, server):
        answer = _one(hook.run_script("exchange/get_exchange_services", {"Server": server.name}),
                      "exchange/get_exchange_services")
        services = {s.Name.lower(): s for s in parse_records(ServiceState, answer.get("Services") or [], report,
                                                             "service")}
        health = {h.Role: h for h in parse_records(RoleHealth, answer.get("Health") or [], report, "role health")}
        report.add("services", len(services))
        report.add("not_running", sum(s.state != "running" and s.StartType == "Automatic" for s in services.values()))
        report.add("roles_unhealthy", sum(not h.RequiredServicesRunning for h in health.values()))
        with conn.transaction():
            server_id = _monitored_server(conn, server)
            if services:
                conn.execute(_SERVICES, {"server": server_id, "at": at, "rows": as_json(
                    [{"name": s.Name, "display_name": s.DisplayName, "state": s.state} for s in services.values()])})
            if health:
                conn.execute(_HEALTH, {"server": server.id, "at": at, "rows": as_json(
                    [{"role": h.Role, "required_services_running": h.RequiredServicesRunning,
                      "services_running": h.ServicesRunning, "services_not_running": h.ServicesNotRunning}
                     for h in health.values()])})

    return every_server(panel_db, report, log, work)


class Processor(Record):
    Name: str
    NumberOfCores: int = Field(gt=0)
    NumberOfLogicalProcessors: int = Field(gt=0)


class ServerInventory(Record):
    Name: str
    Fqdn: str | None = None
    Edition: str | None = None
    AdminDisplayVersion: str | None = None
    ServerRole: str | None = None
    Site: str | None = None
    OSCaption: str | None = None
    OSVersion: str | None = None
    LastBootUpTime: UtcTime = None
    Manufacturer: str | None = None
    Model: str | None = None
    TotalPhysicalMemory: int = Field(gt=0)
    Processors: list[Processor] = Field(min_length=1)

    @property
    def build(self) -> str | None:
        """``Version 15.2 (Build 1544.4)`` → ``15.2.1544.4``."""
        m = re.fullmatch(r"Version (\d+\.\d+) \(Build (\d+\.\d+)\)", (self.AdminDisplayVersion or "").strip())
        return f"{m.group(1)}.{m.group(2)}" if m else None

    @property
    def roles(self) -> list[str]:
        return [r.strip() for r in (self.ServerRole or "").split(",") if r.strip() and r.strip() != "None"]


_INVENTORY = """
INSERT INTO exchange_server_inventory (exchange_server_id, fqdn, edition, admin_display_version, build, server_roles,
    site, os_caption, os_version, os_last_boot_at, manufacturer, model, processor_name, processor_sockets,
    processor_cores, logical_processors, memory_bytes, read_at)
VALUES (%(server)s, %(fqdn)s, %(edition)s, %(version)s, %(build)s, %(roles)s, %(site)s, %(os_caption)s,
        %(os_version)s, %(boot)s, %(manufacturer)s, %(model)s, %(cpu)s, %(sockets)s, %(cores)s, %(logical)s,
        %(memory)s, %(at)s)
ON CONFLICT (exchange_server_id) DO UPDATE SET
    fqdn = EXCLUDED.fqdn, edition = EXCLUDED.edition, admin_display_version = EXCLUDED.admin_display_version,
    build = EXCLUDED.build, server_roles = EXCLUDED.server_roles, site = EXCLUDED.site,
    os_caption = EXCLUDED.os_caption, os_version = EXCLUDED.os_version, os_last_boot_at = EXCLUDED.os_last_boot_at,
    manufacturer = EXCLUDED.manufacturer, model = EXCLUDED.model, processor_name = EXCLUDED.processor_name,
    processor_sockets = EXCLUDED.processor_sockets, processor_cores = EXCLUDED.processor_cores,
    logical_processors = EXCLUDED.logical_processors, memory_bytes = EXCLUDED.memory_bytes, read_at = EXCLUDED.read_at
WHERE exchange_server_inventory.read_at <= EXCLUDED.read_at
"""


def read_inventory_details(panel_db, interval, log) -> dict:
    """Read server inventory details: edition, build, roles and site from Exchange, OS and hardware
    from the machine; the server's ``roles`` in ``exchange_servers`` follow Exchange's answer."""
    at = interval.end
    report = StepReport().zero("servers_read")

    def work(conn, hook, server):
        rows = hook.run_script("exchange/get_exchange_inventory", {"Server": server.name})
        found = parse_records(ServerInventory, rows, report, "server inventory")
        if not found:
            return
        inv = found[0]
        names = sorted({p.Name for p in inv.Processors})
        with conn.transaction():
            conn.execute(_INVENTORY, {
                "server": server.id, "fqdn": inv.Fqdn, "edition": inv.Edition, "version": inv.AdminDisplayVersion,
                "build": inv.build, "roles": inv.roles, "site": inv.Site, "os_caption": inv.OSCaption,
                "os_version": inv.OSVersion, "boot": inv.LastBootUpTime, "manufacturer": inv.Manufacturer,
                "model": inv.Model, "cpu": ", ".join(names), "sockets": len(inv.Processors),
                "cores": sum(p.NumberOfCores for p in inv.Processors),
                "logical": sum(p.NumberOfLogicalProcessors for p in inv.Processors),
                "memory": inv.TotalPhysicalMemory, "at": at})
            if inv.roles:
                conn.execute("UPDATE exchange_servers SET roles = %s WHERE id = %s AND roles IS DISTINCT FROM %s",
                             (inv.roles, server.id, inv.roles))
        report.add("servers_read")

    return every_server(panel_db, report, log, work)


# -- 4. volumes -------------------------------------------------------------------------------------

class Volume(Record):
    Name: str = Field(min_length=2)
    DriveLetter: str | None = None
    Label: str | None = None
    FileSystem: str | None = None
    Capacity: int = Field(gt=0)
    FreeSpace: int = Field(ge=0)

    @property
    def volume(self) -> str:
        """``C:\\`` → ``C:``; a mount point keeps its path (``D:\\ExchangeVolumes\\Vol3``)."""
        return self.Name.rstrip("\\")


class DatabaseFiles(Record):
    Name: str
    EdbFilePath: str | None = None
    LogFolderPath: str | None = None


def _volume_of(path: str | None, volumes: list[Volume]) -> Volume | None:
    """The volume holding ``path``: the longest mount path it lies under (mount points nest)."""
    if not path:
        return None
    folded = path.lower().rstrip("\\") + "\\"
    under = [v for v in volumes if folded.startswith(v.volume.lower() + "\\")]
    return max(under, key=lambda v: len(v.volume), default=None)


_VOLUMES = """
WITH r AS (
    SELECT * FROM jsonb_to_recordset(%(rows)s::jsonb) AS r(
        volume text, label text, file_system text, size_bytes bigint, free_bytes bigint,
        database_files text[], database_logs text[])
), sample AS (
    INSERT INTO server_volume_stats (server_id, sampled_at, volume, size_mb, free_mb)
    SELECT %(server_id)s, %(at)s, volume, size_bytes / 1048576, free_bytes / 1048576 FROM r
    WHERE size_bytes >= 1048576
    ON CONFLICT (server_id, sampled_at, volume) DO NOTHING
    RETURNING volume
), gone AS (
    DELETE FROM exchange_volumes v
    WHERE v.exchange_server_id = %(server)s AND v.sampled_at <= %(at)s AND v.volume NOT IN (SELECT volume FROM r)
), latest AS (
    INSERT INTO exchange_volumes (exchange_server_id, volume, label, file_system, size_bytes, free_bytes,
                                  database_files, database_logs, sampled_at)
    SELECT %(server)s, volume, label, file_system, size_bytes, free_bytes, database_files, database_logs, %(at)s FROM r
    ON CONFLICT (exchange_server_id, volume) DO UPDATE SET
        label = EXCLUDED.label, file_system = EXCLUDED.file_system, size_bytes = EXCLUDED.size_bytes,
        free_bytes = EXCLUDED.free_bytes, database_files = EXCLUDED.database_files,
        database_logs = EXCLUDED.database_logs, sampled_at = EXCLUDED.sampled_at
    WHERE exchange_volumes.sampled_at <= EXCLUDED.sampled_at
)
SELECT count(*) FROM sample
"""


def read_volume_stats(panel_db, interval, log) -> dict:
    """Read exchange server stats: each local volume's size and free space (``server_volume_stats``,
    one sample per run) and which mailbox databases' files and logs it holds (``exchange_volumes``)."""
    at = interval.end
    report = StepReport().zero("volumes", "samples_written")

    def work(conn, hook, server):
        answer = _one(hook.run_script("exchange/get_exchange_volumes", {"Server": server.name}),
                      "exchange/get_exchange_volumes")
        volumes = {v.volume.lower(): v for v in parse_records(Volume, answer.get("Volumes") or [], report, "volume")}
        databases = parse_records(DatabaseFiles, answer.get("Databases") or [], report, "database files")
        report.add("volumes", len(volumes))
        if not volumes:
            return
        listed = list(volumes.values())
        files: dict[str, list[str]] = {}
        logs: dict[str, list[str]] = {}
        for db in databases:
            for path, holder in ((db.EdbFilePath, files), (db.LogFolderPath, logs)):
                volume = _volume_of(path, listed)
                if volume is not None:
                    holder.setdefault(volume.volume, []).append(db.Name)
        records = [{"volume": v.volume, "label": v.Label, "file_system": v.FileSystem, "size_bytes": v.Capacity,
                    "free_bytes": v.FreeSpace, "database_files": sorted(files.get(v.volume, [])),
                    "database_logs": sorted(logs.get(v.volume, []))} for v in listed]
        with conn.transaction():
            server_id = _monitored_server(conn, server)
            (written,) = conn.execute(_VOLUMES, {"rows": as_json(records), "server": server.id,
                                                 "server_id": server_id, "at": at}).fetchone()
        report.add("samples_written", written)

    return every_server(panel_db, report, log, work)


