"""ServerStatsWork: CPU, memory, disk and service samples of the Windows servers, for the monitors.

MonitoringWork's cpu/memory/disk/services monitors read the latest sample at or before their clock
from ``server_stats``, ``server_volume_stats`` and ``server_services`` (0007). This step writes
them: every enabled ``servers`` row with a ``psrp_conn_id`` (0018) is sampled over PowerShell
remoting with ``include/powershell/windows/get_server_stats.ps1`` (performance counters for CPU and
available memory, Win32_ComputerSystem for physical memory, Get-Volume, Get-Service).

One sample per server and run, keyed by the run's clock (``interval.end``): a rerun or a retry of
the same run finds the rows there and adds nothing. Services hold each service's latest state; a
service the server no longer lists is dropped (only by a sample newer than the row). The
Hyper-V hosts' own samples are written by the same code (:func:`write_server_sample`) from
HyperVHomeBackendThread.

A server that cannot be reached (timeout, refused credentials, a missing connection) is named in
the summary and the others are still sampled; the step fails only when every server failed, so
Airflow retries it and alerts.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from panelflow.step import StepReport
from panelflow.hooks.powershell import byte_count, parse_records, powershell_session

SCRIPT = "windows/get_server_stats"
MIB = 1024 * 1024
# Get-Service's ServiceControllerStatus names → server_services.state
SERVICE_STATES = {"Running": "running", "Stopped": "stopped", "Paused": "paused", "StartPending": "starting",
                  "ContinuePending": "starting", "StopPending": "stopping", "PausePending": "stopping"}

Bytes = Annotated[int, BeforeValidator(byte_count), Field(ge=0)]


class _Record(BaseModel):
    model_config = ConfigDict(extra="ignore")


class VolumeRecord(_Record):
    DriveLetter: str = Field(pattern=r"^[A-Za-z]$")
    FileSystemLabel: str | None = None
    Size: Bytes
    SizeRemaining: Bytes


class ServiceRecord(_Record):
    Name: str = Field(min_length=1)
    DisplayName: str | None = None
    Status: str = Field(min_length=1)


class ServerSample(_Record):
    """``get_server_stats.ps1``'s one object; volumes and services are validated one by one."""

    ComputerName: str | None = None
    CpuPercent: float = Field(ge=0)
    MemoryTotalBytes: Bytes = Field(gt=0)
    MemoryAvailableBytes: Bytes
    Volumes: list[Any] = []
    Services: list[Any] = []


class ServerStatsFailed(RuntimeError):
    """Every server the step tried failed: the run fails, so Airflow retries it and alerts."""


_SAMPLE = """
INSERT INTO server_stats (server_id, sampled_at, cpu_percent, memory_total_mb, memory_used_mb)
VALUES (%(server)s, %(at)s, %(cpu)s, %(total)s, %(used)s)
ON CONFLICT (server_id, sampled_at) DO NOTHING
"""

_VOLUMES = """
INSERT INTO server_volume_stats (server_id, sampled_at, volume, size_mb, free_mb)
SELECT %(server)s, %(at)s, x.volume, x.size_mb, x.free_mb
FROM jsonb_to_recordset(%(rows)s::jsonb) AS x(volume text, size_mb bigint, free_mb bigint)
ON CONFLICT (server_id, sampled_at, volume) DO NOTHING
"""

# A sample older than the row (a rerun of an earlier interval) never overwrites a newer state.
_SERVICES = """
INSERT INTO server_services AS s (server_id, service_name, display_name, state, sampled_at)
SELECT %(server)s, x.name, x.display_name, x.state, %(at)s
FROM jsonb_to_recordset(%(rows)s::jsonb) AS x(name text, display_name text, state text)
ON CONFLICT (server_id, service_name) DO UPDATE
SET display_name = EXCLUDED.display_name, state = EXCLUDED.state, sampled_at = EXCLUDED.sampled_at
WHERE s.sampled_at < EXCLUDED.sampled_at
"""

_GONE_SERVICES = """
DELETE FROM server_services
WHERE server_id = %(server)s AND sampled_at < %(at)s AND NOT (service_name = ANY(%(names)s::text[]))
"""


def parse_sample(row: Any, report: StepReport, what: str) -> tuple[ServerSample, list[VolumeRecord],
                                                                     list[ServiceRecord]] | None:
    """The sample, its good volumes and services; a bad part is reported and skipped."""
    (sample,) = parse_records(ServerSample, [row], report, what) or (None,)
    if sample is None:
        return None
    volumes = [v for v in parse_records(VolumeRecord, sample.Volumes, report, f"{what} volume") if v.Size > 0]
    services = parse_records(ServiceRecord, sample.Services, report, f"{what} service")
    return sample, volumes, services


def write_server_sample(conn, server_id: int, at: datetime, sample: ServerSample, volumes: list[VolumeRecord],
                        services: list[ServiceRecord], *, prune_services: bool = True) -> dict[str, int]:
    """One sample into server_stats / server_volume_stats / server_services (in one transaction)."""
    total_mb = sample.MemoryTotalBytes // MIB
    used_mb = max(sample.MemoryTotalBytes - sample.MemoryAvailableBytes, 0) // MIB
    volume_rows = {}
    for v in volumes:
        name = f"{v.DriveLetter.upper()}:"
        volume_rows[name] = {"volume": name, "size_mb": max(v.Size // MIB, 1),
                             "free_mb": min(v.SizeRemaining, v.Size) // MIB}
    service_rows = {s.Name: {"name": s.Name, "display_name": s.DisplayName,
                             "state": SERVICE_STATES.get(s.Status, "unknown")} for s in services}
    with conn.transaction():
        stats = conn.execute(_SAMPLE, {"server": server_id, "at": at, "cpu": round(min(sample.CpuPercent, 100.0), 2),
                                       "total": total_mb, "used": used_mb}).rowcount
        vols = conn.execute(_VOLUMES, {"server": server_id, "at": at,
                                       "rows": json.dumps(list(volume_rows.values()))}).rowcount
        svcs = conn.execute(_SERVICES, {"server": server_id, "at": at,
                                        "rows": json.dumps(list(service_rows.values()))}).rowcount
        gone = 0
        if prune_services:
            gone = conn.execute(_GONE_SERVICES, {"server": server_id, "at": at, "names": list(service_rows)}).rowcount
    return {"samples_written": stats, "volume_samples_written": vols, "services_updated": svcs,
            "services_removed": gone}


def sync_server_stats(panel_db, interval, log=None) -> dict:
    """Sync server stats (CPU, Disk, Memory)."""
    from airflow.exceptions import AirflowException

    from panelflow.hooks.powershell import PowerShellError

    report = StepReport()
    for key in ("servers", "servers_sampled", "servers_failed", "samples_written", "volume_samples_written",
                "services_updated", "services_removed"):
        report.add(key, 0)
    at = interval.end
    failed: list[str] = []
    with panel_db.get_conn() as conn:
        conn.autocommit = True
        servers = conn.execute("SELECT id, name, psrp_conn_id FROM servers WHERE enabled AND psrp_conn_id IS NOT NULL"
                               " ORDER BY id").fetchall()
        for server_id, name, conn_id in servers:
            report.add("servers")
            try:
                with powershell_session(conn_id, log) as hook:
                    rows = hook.run_script(SCRIPT)
            except (PowerShellError, AirflowException) as exc:
                report.add("servers_failed")
                failed.append(name)
                report.skip(f"server not sampled: {str(exc).splitlines()[0][:300]}", f"server {name}")
                if log is not None:
                    log.warning("server %s not sampled: %s", name, exc)
                continue
            parsed = parse_sample(rows[0] if rows else None, report, f"server {name}")
            if parsed is None:
                continue
            for key, n in write_server_sample(conn, server_id, at, *parsed).items():
                report.add(key, n)
            report.add("servers_sampled")
    summary = report.as_dict()
    summary["failed_servers"] = failed
    if servers and len(failed) == len(servers):
        raise ServerStatsFailed(f"no server could be sampled: {summary['skipped_examples'][:5]}")
    if log is not None and summary["skipped"]:
        log.warning("server stats: %s", summary["skipped"])
    return summary
