"""A Windows server's CPU, memory, volume and service sample: read from ``get_server_stats.ps1`` and
written to the monitors' tables (``server_stats``, ``server_volume_stats``, ``server_services``, 0007).

Two threads sample Windows servers: ServerStatsWork (every ``servers`` row with a psrp connection)
and HyperVHomeBackendThread (each Hyper-V host's own ``servers`` row). Both write through here, so
a monitor reads one kind of sample whoever took it.

One sample per server and run, keyed by the run's clock: a rerun or a retry of the same run finds
the rows there and adds nothing. Services hold each service's latest state; a service the server
no longer lists is dropped, but only by a sample newer than the row.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from panelflow.hooks.powershell import byte_count, parse_records
from panelflow.step import StepReport

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
