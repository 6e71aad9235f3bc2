"""Exchange statistics threads: what the Exchange servers report, read over PowerShell remoting.

Threads and steps (catalog ``exchange.yaml``):

- ExchangeCPUMemoryStatsWork → :func:`sync_cpu_memory_stats`
- ExchangeDatabaseStatsWork → :func:`sync_mailbox_database_stats`
- ExchangeServiceStatsWork → :func:`read_service_stats`, :func:`read_inventory_details`
- ExchangeVolumeStatsWork → :func:`read_volume_stats`
- ExchangeMailboxMobileDevicesReportWork → :func:`fetch_mobile_devices_report`
- MailFlowReport → :func:`update_mail_flow_logs`
- MailboxMigrationWork → :func:`update_migration_batch_status`

**Servers.** Every enabled ``exchange_servers`` row is asked, through the psrp connection its
``conn_id`` names, with one :class:`PowerShellHook` context (one runspace pool) per server and
step: a step's scripts on one server share the pool instead of paying a WinRM logon each. Each
operation is a script of ``include/powershell/exchange/`` whose values travel as PSRP parameters.
A server that cannot be reached, times out, refuses the credentials or whose script fails is
named in the summary (``skipped``) and the other servers are still processed; the step fails
(:class:`ExchangeServersFailed`) only when every server failed. Each server's rows are written in
one transaction after its answers are in, so no transaction stays open while PowerShell runs.

**Records.** Script output is validated into the pydantic models below
(:func:`~panelflow.hooks.powershell.parse_records`): a malformed record is reported and skipped,
the server's other records are written.

**Where it goes.** CPU/memory, volumes and services of an Exchange machine go to the monitored
servers' tables of 0007 (``server_stats``, ``server_volume_stats``, ``server_services``), so the
monitors read Exchange servers like any other; the ``servers`` row is found by name or host
(``exchange_servers.server_id``), or created. The rest has its own tables (0016).

**Clock.** ``interval.end`` stamps every sample, so a rerun of a run adds nothing: samples are
unique per server (or database) and clock. MailFlowReport alone reads a span: its data interval.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Annotated, Any
from uuid import UUID

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from panelflow.step import StepReport
from panelflow.hooks.powershell import (PowerShellError, PowerShellHook, PowerShellOutputError, byte_count,
                                        parse_records, ps_datetime)

SNAPSHOT_SAMPLE_INTERVAL = 2         # seconds between counter samples
SNAPSHOT_SAMPLES = 3                 # counter samples averaged per reading
MAIL_FLOW_LIMIT = 5000               # rows one message-tracking call may return before its span is split
MAIL_FLOW_MIN_SLICE = timedelta(minutes=1)
MAIL_FLOW_MAX_CALLS = 256            # message-tracking calls per server and run, whatever the splitting
FAILED_USERS_PER_BATCH = 50
MOBILE_ACTIVE_DAYS = 30
MIGRATION_NOTICE_TEMPLATE = "exchange_migration_batch_finished"
MIGRATION_FINISHED = {"Completed": "completed", "CompletedWithErrors": "completed with errors",
                      "Failed": "failed", "Corrupted": "failed"}
MIGRATION_FIRST_SEEN_WINDOW = timedelta(hours=24)
NOTICE_FAILURES_LISTED = 20


class ExchangeServersFailed(RuntimeError):
    """Every enabled Exchange server failed: nothing was read (worth Airflow's retry)."""


# -- PowerShell values ----------------------------------------------------------------------------

UtcTime = Annotated[datetime | None, BeforeValidator(ps_datetime)]
ByteCount = Annotated[Annotated[int, Field(ge=0)] | None, BeforeValidator(byte_count)]


class _Record(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


def _ps_time(at: datetime) -> str:
    """A time as a script's ``[datetime]`` parameter takes it (pypsrp cannot send a DateTime)."""
    return at.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _mb(n: int) -> int:
    return n // (1024 * 1024)


def _one(rows: list, script: str) -> dict:
    """The single object a script prints (a reading, not a list of records)."""
    if len(rows) != 1 or not isinstance(rows[0], dict):
        raise PowerShellOutputError(f"{script}: expected one object, got {len(rows)} item(s)")
    return rows[0]


def _json(records) -> str:
    return json.dumps(records, default=str)


# -- servers --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ExchangeServer:
    id: int
    name: str
    fqdn: str
    conn_id: str
    server_id: int | None


def _servers(conn) -> list[ExchangeServer]:
    rows = conn.execute("SELECT id, name, fqdn, conn_id, server_id FROM exchange_servers WHERE enabled"
                        " ORDER BY name").fetchall()
    return [ExchangeServer(*row) for row in rows]


def _unreachable(exc: BaseException) -> str | None:
    """Why a server's answer is missing, or None when ``exc`` is ours (a bug) and must propagate."""
    from airflow.exceptions import AirflowException

    from panelflow.hooks.powershell import _is_transport_error

    if isinstance(exc, PowerShellError):
        return str(exc)
    if isinstance(exc, AirflowException):   # the connection is missing or misconfigured
        return f"{type(exc).__name__}: {exc}"
    if _is_transport_error(exc):            # opening or closing the pool
        return f"unavailable: {type(exc).__name__}: {exc}"
    return None


def _each_server(conn, report: StepReport, log, work) -> list[ExchangeServer]:
    """Run ``work(conn, hook, server)`` for every enabled server; the servers that answered.

    One failing server is reported and the next one is tried; all failing raises.
    """
    servers = _servers(conn)
    report.add("servers", len(servers))
    report.add("servers_failed", 0)
    answered, failures = [], []
    for server in servers:
        try:
            with PowerShellHook(server.conn_id) as hook:
                work(conn, hook, server)
        except Exception as exc:  # noqa: BLE001 - sorted by _unreachable; ours propagate
            reason = _unreachable(exc)
            if reason is None:
                raise
            failures.append(f"{server.name}: {reason}")
            report.add("servers_failed")
            report.skip(reason.splitlines()[0][:300], f"server {server.name}")
            if log is not None:
                log.warning("Exchange server %s (%s) failed: %s", server.name, server.conn_id, reason)
        else:
            answered.append(server)
    if servers and not answered:
        raise ExchangeServersFailed(f"every Exchange server failed ({len(servers)}): " + "; ".join(failures))
    return answered


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


class CounterSample(_Record):
    Path: str
    CookedValue: float = Field(ge=0)
    Timestamp: UtcTime = None


class CounterReading(_Record):
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
    report = StepReport()
    report.add("samples_written", 0)
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

    with panel_db.get_conn() as conn:
        conn.autocommit = True
        _each_server(conn, report, log, work)
    return report.as_dict()


# -- 2. mailbox databases ---------------------------------------------------------------------------

class MailboxDatabase(_Record):
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
    report = StepReport()
    for key in ("databases", "stats_written"):
        report.add(key, 0)

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
            written = conn.execute(_DATABASES, {"rows": _json(records), "server": server.id, "at": at}).rowcount
        report.add("stats_written", written)

    with panel_db.get_conn() as conn:
        conn.autocommit = True
        _each_server(conn, report, log, work)
    return report.as_dict()


# -- 3. services and inventory ----------------------------------------------------------------------

SERVICE_STATES = {"running": "running", "stopped": "stopped", "paused": "paused", "startpending": "starting",
                  "continuepending": "starting", "stoppending": "stopping", "pausepending": "stopping"}


class ServiceState(_Record):
    Name: str = Field(min_length=1)
    DisplayName: str | None = None
    Status: str = Field(min_length=1)
    StartType: str | None = None

    @property
    def state(self) -> str:
        return SERVICE_STATES.get(self.Status.lower(), "unknown")


class RoleHealth(_Record):
    Role: str = Field(min_length=1)
    RequiredServicesRunning: bool
    ServicesRunning: list[str] = []
    ServicesNotRunning: list[str] = []

    @field_validator("ServicesRunning", "ServicesNotRunning", mode="before")
    @classmethod
    def _none_is_empty(cls, value):
        return [] if value is None else value


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
    report = StepReport()
    for key in ("services", "not_running", "roles_unhealthy"):
        report.add(key, 0)

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
                conn.execute(_SERVICES, {"server": server_id, "at": at, "rows": _json(
                    [{"name": s.Name, "display_name": s.DisplayName, "state": s.state} for s in services.values()])})
            if health:
                conn.execute(_HEALTH, {"server": server.id, "at": at, "rows": _json(
                    [{"role": h.Role, "required_services_running": h.RequiredServicesRunning,
                      "services_running": h.ServicesRunning, "services_not_running": h.ServicesNotRunning}
                     for h in health.values()])})

    with panel_db.get_conn() as conn:
        conn.autocommit = True
        _each_server(conn, report, log, work)
    return report.as_dict()


class Processor(_Record):
    Name: str
    NumberOfCores: int = Field(gt=0)
    NumberOfLogicalProcessors: int = Field(gt=0)


class ServerInventory(_Record):
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
    report = StepReport()
    report.add("servers_read", 0)

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

    with panel_db.get_conn() as conn:
        conn.autocommit = True
        _each_server(conn, report, log, work)
    return report.as_dict()


# -- 4. volumes -------------------------------------------------------------------------------------

class Volume(_Record):
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


class DatabaseFiles(_Record):
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
    report = StepReport()
    for key in ("volumes", "samples_written"):
        report.add(key, 0)

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
            (written,) = conn.execute(_VOLUMES, {"rows": _json(records), "server": server.id,
                                                 "server_id": server_id, "at": at}).fetchone()
        report.add("samples_written", written)

    with panel_db.get_conn() as conn:
        conn.autocommit = True
        _each_server(conn, report, log, work)
    return report.as_dict()


# -- 5. mobile devices ------------------------------------------------------------------------------

class MobileDevice(_Record):
    Guid: UUID
    DeviceId: str = Field(min_length=1)
    DeviceType: str | None = None
    DeviceModel: str | None = None
    DeviceOS: str | None = None
    DeviceUserAgent: str | None = None
    FriendlyName: str | None = None
    FirstSyncTime: UtcTime = None
    LastSuccessSync: UtcTime = None
    Status: str | None = None
    DeviceAccessState: str | None = None
    MailboxGuid: UUID
    PrimarySmtpAddress: str = Field(pattern=r"^[^@\s]+@[^@\s]+$")
    DisplayName: str | None = None
    OrganizationalUnit: str = Field(min_length=1)
    StatisticsError: str | None = None

    @property
    def organization(self) -> str:
        """The mailbox's organisation: the last part of its OU (``corp.example/Hosting/contoso.example``)."""
        return self.OrganizationalUnit.rstrip("/").rsplit("/", 1)[-1]


_DEVICES = """
INSERT INTO exchange_mobile_devices (mailbox_guid, device_id, device_guid, exchange_server_id, mailbox,
    mailbox_display_name, organization, device_type, device_model, device_os, device_user_agent, device_friendly_name,
    first_sync_at, last_success_sync_at, status, access_state, first_seen_at, last_seen_at, removed_at)
SELECT r.mailbox_guid, r.device_id, r.device_guid, %(server)s, r.mailbox, r.mailbox_display_name, r.organization,
       r.device_type, r.device_model, r.device_os, r.device_user_agent, r.device_friendly_name, r.first_sync_at,
       r.last_success_sync_at, r.status, r.access_state, %(at)s, %(at)s, NULL
FROM jsonb_to_recordset(%(rows)s::jsonb) AS r(
    mailbox_guid uuid, device_id text, device_guid uuid, mailbox text, mailbox_display_name text, organization text,
    device_type text, device_model text, device_os text, device_user_agent text, device_friendly_name text,
    first_sync_at timestamptz, last_success_sync_at timestamptz, status text, access_state text)
ON CONFLICT (mailbox_guid, device_id) DO UPDATE SET
    device_guid = EXCLUDED.device_guid, exchange_server_id = EXCLUDED.exchange_server_id, mailbox = EXCLUDED.mailbox,
    mailbox_display_name = EXCLUDED.mailbox_display_name, organization = EXCLUDED.organization,
    device_type = EXCLUDED.device_type, device_model = EXCLUDED.device_model, device_os = EXCLUDED.device_os,
    device_user_agent = EXCLUDED.device_user_agent, device_friendly_name = EXCLUDED.device_friendly_name,
    first_sync_at = EXCLUDED.first_sync_at,
    last_success_sync_at = coalesce(EXCLUDED.last_success_sync_at, exchange_mobile_devices.last_success_sync_at),
    status = coalesce(EXCLUDED.status, exchange_mobile_devices.status), access_state = EXCLUDED.access_state,
    last_seen_at = EXCLUDED.last_seen_at, removed_at = NULL
WHERE exchange_mobile_devices.last_seen_at <= EXCLUDED.last_seen_at
"""

CSV_COLUMNS = ("Organization", "Mailbox", "DisplayName", "DeviceType", "DeviceModel", "DeviceOS", "DeviceUserAgent",
               "DeviceId", "FirstSyncTime", "LastSuccessSync", "Status", "AccessState")


def _iso(value: datetime | None) -> str:
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ") if value else ""


def _write_reports(conn, report_date, at: datetime, active_since: datetime) -> int:
    """One report row per organisation with devices, its CSV from the devices table as it stands."""
    rows = conn.execute(
        "SELECT organization, mailbox, mailbox_display_name, device_type, device_model, device_os, device_user_agent,"
        " device_id, first_sync_at, last_success_sync_at, status, access_state"
        " FROM exchange_mobile_devices WHERE removed_at IS NULL").fetchall()
    by_org: dict[str, list[tuple]] = {}
    for row in sorted(rows, key=lambda r: (r[0], r[1], (r[3] or "").lower(), r[7])):   # not the DB's collation
        by_org.setdefault(row[0], []).append(row)
    reports = []
    for org, devices in by_org.items():
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\r\n")
        writer.writerow(CSV_COLUMNS)
        for d in devices:
            writer.writerow([*d[:8], _iso(d[8]), _iso(d[9]), d[10] or "", d[11] or ""])
        types = Counter(d[3] or "unknown" for d in devices)
        reports.append((
            report_date, org, len({d[1] for d in devices}), len(devices),
            sum(1 for d in devices if d[9] is not None and d[9] >= active_since),
            sum(1 for d in devices if (d[11] or "").lower() == "blocked"),
            sum(1 for d in devices if (d[11] or "").lower() == "quarantined"),
            json.dumps(dict(sorted(types.items()))), out.getvalue(), at))
    if reports:
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO exchange_mobile_device_reports (report_date, organization, mailboxes, devices,"
                " active_devices, blocked_devices, quarantined_devices, device_types, csv, created_at)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s::jsonb, %s, %s)"
                " ON CONFLICT (report_date, organization) DO UPDATE SET mailboxes = EXCLUDED.mailboxes,"
                " devices = EXCLUDED.devices, active_devices = EXCLUDED.active_devices,"
                " blocked_devices = EXCLUDED.blocked_devices, quarantined_devices = EXCLUDED.quarantined_devices,"
                " device_types = EXCLUDED.device_types, csv = EXCLUDED.csv, created_at = EXCLUDED.created_at"
                " WHERE exchange_mobile_device_reports.created_at <= EXCLUDED.created_at", reports)
    return len(reports)


def fetch_mobile_devices_report(panel_db, interval, params, log) -> dict:
    """Create and fetch exchange mailbox devices report.

    Each server reports the devices of the mailboxes on the databases it hosts; devices are
    upserted per mailbox (ExchangeGuid) and DeviceId. A device no longer reported is marked
    ``removed_at`` — only in a run where every server answered, since a silent server's devices
    are unknown, not gone. Then one report per organisation for the clock's day
    (``interval.end`` in the catalog's time zone): counts and the device list as CSV, rebuilt from
    the table, so a rerun the same day replaces it.
    """
    from zoneinfo import ZoneInfo

    params = params or {}
    at = interval.end
    active_since = at - timedelta(days=int(params.get("mobile_device_active_days", MOBILE_ACTIVE_DAYS)))
    report = StepReport()
    for key in ("devices", "devices_written", "devices_removed", "reports"):
        report.add(key, 0)

    def work(conn, hook, server):
        rows = hook.run_script("exchange/get_mobile_device_statistics", {"Server": server.name})
        devices = {(d.MailboxGuid, d.DeviceId.lower()): d
                   for d in parse_records(MobileDevice, rows, report, "mobile device")}
        report.add("devices", len(devices))
        for d in devices.values():
            if d.StatisticsError:
                report.add("devices_without_statistics")
        if not devices:
            return
        records = [{"mailbox_guid": str(d.MailboxGuid), "device_id": d.DeviceId, "device_guid": str(d.Guid),
                    "mailbox": d.PrimarySmtpAddress.lower(), "mailbox_display_name": d.DisplayName,
                    "organization": d.organization, "device_type": d.DeviceType, "device_model": d.DeviceModel,
                    "device_os": d.DeviceOS, "device_user_agent": d.DeviceUserAgent,
                    "device_friendly_name": d.FriendlyName, "first_sync_at": d.FirstSyncTime,
                    "last_success_sync_at": d.LastSuccessSync, "status": d.Status,
                    "access_state": d.DeviceAccessState} for d in devices.values()]
        with conn.transaction():
            report.add("devices_written", conn.execute(_DEVICES, {"rows": _json(records), "server": server.id,
                                                                 "at": at}).rowcount)

    with panel_db.get_conn() as conn:
        conn.autocommit = True
        servers = _servers(conn)
        answered = _each_server(conn, report, log, work)
        with conn.transaction():
            if answered and len(answered) == len(servers):
                report.add("devices_removed", conn.execute(
                    "UPDATE exchange_mobile_devices SET removed_at = %s WHERE removed_at IS NULL AND last_seen_at < %s",
                    (at, at)).rowcount)
            report.add("reports", _write_reports(conn, at.astimezone(ZoneInfo(interval.tz)).date(), at,
                                                 active_since))
    return report.as_dict()


# -- 6. mail flow -----------------------------------------------------------------------------------

class TrackingEvent(_Record):
    Timestamp: Annotated[datetime, BeforeValidator(ps_datetime)]
    EventId: str = Field(min_length=1)
    Source: str | None = None
    Sender: str | None = None
    Recipients: list[str] = []
    RecipientCount: int | None = None
    MessageSubject: str | None = None
    TotalBytes: int | None = Field(default=None, ge=0)
    MessageId: str | None = None
    InternalMessageId: int
    ServerHostname: str | None = None

    @field_validator("Recipients", mode="before")
    @classmethod
    def _none_is_empty(cls, value):
        return [] if value is None else value

    @property
    def sender_domain(self) -> str:
        return (self.Sender or "").rpartition("@")[2].lower() if "@" in (self.Sender or "") else ""


TRACKING_COLUMNS = ("exchange_server_id", "logged_at", "event_id", "source", "internal_message_id", "recipient",
                    "message_id", "sender", "sender_domain", "message_subject", "total_bytes", "recipient_count",
                    "server_hostname")

_HOURLY = """
WITH per_message AS (
    SELECT date_trunc('hour', logged_at, 'UTC') AS hour, sender_domain, event_id, exchange_server_id,
           internal_message_id, count(*) AS events, count(*) FILTER (WHERE recipient <> '') AS recipients,
           max(coalesce(total_bytes, 0)) AS total_bytes
    FROM exchange_message_tracking
    WHERE logged_at >= %(first)s AND logged_at < %(last)s
    GROUP BY 1, 2, 3, 4, 5
)
INSERT INTO exchange_mail_flow_hourly (hour, sender_domain, event_id, events, messages, recipients, total_bytes)
SELECT hour, sender_domain, event_id, sum(events), count(*), sum(recipients), sum(total_bytes)
FROM per_message GROUP BY 1, 2, 3
"""


def _hour_of(at: datetime) -> datetime:
    return at.astimezone(timezone.utc).replace(minute=0, second=0, microsecond=0)


def _tracking_events(hook, server: ExchangeServer, start: datetime, end: datetime, limit: int,
                     min_slice: timedelta, report: StepReport) -> list[dict]:
    """The server's tracking rows in [start, end], asked for the whole span first and split in
    halves wherever an answer came back cut (more than ``limit`` rows), down to ``min_slice``."""
    pending = [(start, end)]
    rows: list[dict] = []
    calls = 0
    while pending:
        if calls >= MAIL_FLOW_MAX_CALLS:
            report.skip(f"{len(pending)} span(s) not read: {MAIL_FLOW_MAX_CALLS} message-tracking calls made",
                        f"server {server.name} {_ps_time(pending[0][0])}")
            break
        lo, hi = pending.pop(0)
        calls += 1
        answer = hook.run_script("exchange/get_message_tracking_log",
                                 {"Server": server.name, "Start": _ps_time(lo), "End": _ps_time(hi), "Limit": limit})
        if len(answer) > limit:
            if hi - lo > min_slice:
                mid = lo + timedelta(seconds=int((hi - lo).total_seconds() // 2))
                pending[:0] = [(lo, mid), (mid, hi)]
                continue
            report.skip(f"more than {limit} events in {int((hi - lo).total_seconds())} s: the rest of the span is"
                        " not read", f"server {server.name} {_ps_time(lo)}")
        rows.extend(answer)
    report.add("tracking_calls", calls)
    return rows


def update_mail_flow_logs(panel_db, interval, params, log) -> dict:
    """Update Exchange mail flow logs: the data interval's message-tracking events of every server.

    One row per event and recipient, unique on (server, InternalMessageId, EventId, recipient,
    timestamp): a rerun of the same hour, or spans asked twice, add nothing. Output is bounded:
    one call returns at most ``mail_flow_limit`` rows (+1 to tell it was cut); a cut span is asked
    again in halves. Then the hourly totals per sender domain and event of every whole hour the interval
    touches are recomputed from the table (so an hour read in two runs adds up once).
    """
    params = params or {}
    start, end = interval.start, interval.end
    limit = int(params.get("mail_flow_limit", MAIL_FLOW_LIMIT))
    min_slice = timedelta(seconds=int(params.get("mail_flow_min_slice_seconds", MAIL_FLOW_MIN_SLICE.total_seconds())))
    report = StepReport()
    for key in ("events", "rows_added", "tracking_calls", "hourly_rows"):
        report.add(key, 0)
    if end <= start:
        return report.as_dict()

    def work(conn, hook, server):
        rows = _tracking_events(hook, server, start, end, limit, min_slice, report)
        events = parse_records(TrackingEvent, rows, report, "tracking event")
        report.add("events", len(events))
        seen: dict[tuple, tuple] = {}
        for e in events:
            for recipient in (e.Recipients or [""]):
                row = (server.id, e.Timestamp, e.EventId.upper(), e.Source, e.InternalMessageId, recipient.lower(),
                       e.MessageId, e.Sender, e.sender_domain, e.MessageSubject, e.TotalBytes,
                       e.RecipientCount if e.RecipientCount is not None else len(e.Recipients), e.ServerHostname)
                seen[(e.InternalMessageId, row[2], row[5], e.Timestamp)] = row
        if not seen:
            return
        with conn.transaction():
            conn.execute("CREATE TEMP TABLE incoming_tracking (LIKE exchange_message_tracking) ON COMMIT DROP")
            columns = ", ".join(TRACKING_COLUMNS)
            with conn.cursor() as cur, cur.copy(f"COPY incoming_tracking ({columns}) FROM STDIN") as copy:
                for row in seen.values():
                    copy.write_row(row)
            added = conn.execute(f"INSERT INTO exchange_message_tracking ({columns})"
                                 f" SELECT {columns} FROM incoming_tracking"
                                 " ON CONFLICT DO NOTHING").rowcount
        report.add("rows_added", added)

    with panel_db.get_conn() as conn:
        conn.autocommit = True
        _each_server(conn, report, log, work)
        first = _hour_of(start)
        last = end if _hour_of(end) == end else _hour_of(end) + timedelta(hours=1)
        with conn.transaction():   # whole hours replaced: one statement's DELETE and INSERT would collide
            conn.execute("DELETE FROM exchange_mail_flow_hourly WHERE hour >= %s AND hour < %s", (first, last))
            report.add("hourly_rows", conn.execute(_HOURLY, {"first": first, "last": last}).rowcount)
    return report.as_dict()


# -- 7. migration batches ---------------------------------------------------------------------------

class MigrationUser(_Record):
    Identity: str = Field(min_length=1)
    Status: str | None = None
    ErrorSummary: str | None = None
    LastSuccessfulSyncTime: UtcTime = None


class MigrationBatch(_Record):
    Identity: str = Field(min_length=1)
    BatchGuid: UUID
    Status: str = Field(min_length=1)
    MigrationType: str | None = None
    TotalCount: int = Field(ge=0)
    SyncedCount: int = Field(default=0, ge=0)
    FinalizedCount: int = Field(default=0, ge=0)
    FailedCount: int = Field(default=0, ge=0)
    NotificationEmails: list[str] = []
    CreationDateTime: UtcTime = None
    LastSyncedDateTime: UtcTime = None
    FinalizedDateTime: UtcTime = None
    FailedUsers: list[Any] = []

    @field_validator("NotificationEmails", "FailedUsers", mode="before")
    @classmethod
    def _none_is_empty(cls, value):
        return [] if value is None else value


_BATCHES = """
WITH r AS (
    SELECT * FROM jsonb_to_recordset(%(rows)s::jsonb) AS r(
        batch_guid uuid, identity text, migration_type text, status text, total_count integer, synced_count integer,
        finalized_count integer, failed_count integer, notification_emails text[], exchange_created_at timestamptz,
        last_synced_at timestamptz, finalized_at timestamptz)
), before AS (
    SELECT b.batch_guid, b.status FROM exchange_migration_batches b JOIN r USING (batch_guid)
), up AS (
    INSERT INTO exchange_migration_batches (batch_guid, identity, exchange_server_id, migration_type, status,
        total_count, synced_count, finalized_count, failed_count, notification_emails, exchange_created_at,
        last_synced_at, finalized_at, first_seen_at, last_seen_at, status_changed_at)
    SELECT batch_guid, identity, %(server)s, migration_type, status, total_count, synced_count, finalized_count,
           failed_count, notification_emails, exchange_created_at, last_synced_at, finalized_at, %(at)s, %(at)s, %(at)s
    FROM r
    ON CONFLICT (batch_guid) DO UPDATE SET
        identity = EXCLUDED.identity, exchange_server_id = EXCLUDED.exchange_server_id,
        migration_type = EXCLUDED.migration_type, status = EXCLUDED.status, total_count = EXCLUDED.total_count,
        synced_count = EXCLUDED.synced_count, finalized_count = EXCLUDED.finalized_count,
        failed_count = EXCLUDED.failed_count, notification_emails = EXCLUDED.notification_emails,
        exchange_created_at = EXCLUDED.exchange_created_at, last_synced_at = EXCLUDED.last_synced_at,
        finalized_at = EXCLUDED.finalized_at, last_seen_at = EXCLUDED.last_seen_at,
        status_changed_at = CASE WHEN exchange_migration_batches.status = EXCLUDED.status
                                 THEN exchange_migration_batches.status_changed_at ELSE EXCLUDED.status_changed_at END
    WHERE exchange_migration_batches.last_seen_at <= EXCLUDED.last_seen_at
    RETURNING id, batch_guid, status, customer_id, status_changed_at
)
SELECT up.id, up.batch_guid, before.status, up.status, c.email, up.status_changed_at
FROM up LEFT JOIN before USING (batch_guid) LEFT JOIN customers c ON c.id = up.customer_id
"""

_FAILURES = """
WITH r AS (
    SELECT * FROM jsonb_to_recordset(%(rows)s::jsonb)
        AS r(batch_id bigint, mailbox text, status text, error_summary text, last_successful_sync_at timestamptz)
), gone AS (
    DELETE FROM exchange_migration_failures f
    WHERE f.batch_id = ANY(%(batches)s::bigint[]) AND f.seen_at <= %(at)s
      AND (f.batch_id, f.mailbox) NOT IN (SELECT batch_id, mailbox FROM r)
)
INSERT INTO exchange_migration_failures (batch_id, mailbox, status, error_summary, last_successful_sync_at, seen_at)
SELECT batch_id, mailbox, status, error_summary, last_successful_sync_at, %(at)s FROM r
ON CONFLICT (batch_id, mailbox) DO UPDATE SET status = EXCLUDED.status, error_summary = EXCLUDED.error_summary,
    last_successful_sync_at = EXCLUDED.last_successful_sync_at, seen_at = EXCLUDED.seen_at
WHERE exchange_migration_failures.seen_at <= EXCLUDED.seen_at
"""


def _finished_just_now(batch: MigrationBatch, before: str | None, at: datetime) -> bool:
    """Whether this run saw the batch finish: it was known unfinished, or is new and finished lately
    (a batch that finished long before the panel first saw it is recorded, not announced)."""
    if batch.Status not in MIGRATION_FINISHED:
        return False
    if before is not None:
        return before not in MIGRATION_FINISHED
    finished = batch.FinalizedDateTime or batch.LastSyncedDateTime or batch.CreationDateTime
    return finished is not None and finished >= at - MIGRATION_FIRST_SEEN_WINDOW


def update_migration_batch_status(panel_db, interval, params, log) -> dict:
    """Update mailbox migration batch status: batches upserted by batch GUID with their counts and
    failed users; a batch this run saw finish (completed, completed with errors, failed) queues one
    notice per recipient — the batch's panel customer, else the batch's notification addresses —
    keyed on the batch, its status and when that status was first seen, in the same transaction as
    the status, so neither a rerun nor a second server of the organisation sends it again."""
    from panelflow.services.outbox import enqueue

    params = params or {}
    at = interval.end
    per_batch = int(params.get("migration_failed_users_per_batch", FAILED_USERS_PER_BATCH))
    report = StepReport()
    for key in ("batches", "status_changes", "failed_users", "notices_queued"):
        report.add(key, 0)

    def work(conn, hook, server):
        rows = hook.run_script("exchange/get_migration_batches", {"FailedUsersPerBatch": per_batch})
        batches = {b.BatchGuid: b for b in parse_records(MigrationBatch, rows, report, "migration batch")}
        report.add("batches", len(batches))
        if not batches:
            return
        failed = {guid: parse_records(MigrationUser, b.FailedUsers, report, f"migration user of {b.Identity}")
                  for guid, b in batches.items()}
        records = [{"batch_guid": str(b.BatchGuid), "identity": b.Identity, "migration_type": b.MigrationType,
                    "status": b.Status, "total_count": b.TotalCount, "synced_count": b.SyncedCount,
                    "finalized_count": b.FinalizedCount, "failed_count": b.FailedCount,
                    "notification_emails": sorted({e.strip().lower() for e in b.NotificationEmails if e.strip()}),
                    "exchange_created_at": b.CreationDateTime, "last_synced_at": b.LastSyncedDateTime,
                    "finalized_at": b.FinalizedDateTime} for b in batches.values()]
        with conn.transaction():
            written = conn.execute(_BATCHES, {"rows": _json(records), "server": server.id, "at": at}).fetchall()
            ids = {guid: batch_id for batch_id, guid, *_ in written}
            users = [{"batch_id": ids[guid], "mailbox": u.Identity.lower(), "status": u.Status,
                      "error_summary": u.ErrorSummary, "last_successful_sync_at": u.LastSuccessfulSyncTime}
                     for guid, found in failed.items() if guid in ids for u in found]
            conn.execute(_FAILURES, {"rows": _json(users), "batches": list(ids.values()), "at": at})
            report.add("failed_users", len(users))
            for batch_id, guid, before, status, customer_email, changed_at in written:
                batch = batches[guid]
                if before is not None and before != status:
                    report.add("status_changes")
                if not _finished_just_now(batch, before, at):
                    continue
                recipients = [customer_email] if customer_email else \
                    sorted({e.strip().lower() for e in batch.NotificationEmails if e.strip()})
                if not recipients:
                    report.skip("finished, but no customer or notification address to tell", f"batch {batch.Identity}")
                    continue
                context = {
                    "batch": batch.Identity, "status": batch.Status, "outcome": MIGRATION_FINISHED[batch.Status],
                    "server": server.name, "total": batch.TotalCount, "synced": batch.SyncedCount,
                    "finalized": batch.FinalizedCount, "failed": batch.FailedCount,
                    "finished_at": _iso(batch.FinalizedDateTime or batch.LastSyncedDateTime or at),
                    "failures": [{"mailbox": u.Identity, "error": u.ErrorSummary or u.Status or ""}
                                 for u in failed[guid][:NOTICE_FAILURES_LISTED]],
                    "more_failures": max(0, batch.FailedCount - min(len(failed[guid]), NOTICE_FAILURES_LISTED))}
                for address in recipients:
                    key = f"exchange_migration:{guid}:{batch.Status}:{_iso(changed_at)}:{address.lower()}"
                    if enqueue(conn, dedupe_key=key, to=address, template=MIGRATION_NOTICE_TEMPLATE, context=context,
                               not_before=at):
                        report.add("notices_queued")

    with panel_db.get_conn() as conn:
        conn.autocommit = True
        _each_server(conn, report, log, work)
    return report.as_dict()
