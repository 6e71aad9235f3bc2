"""The Hyper-V backend: who the hosts are, what their scripts print, and the loop over hosts.

Each host step opens one PowerShell session per host (:func:`panelflow.hooks.powershell.open_powershell`).
A host that cannot be reached, refuses the credentials, times out or whose script fails is named in
the summary (``failed_hosts``) and recorded in ``hyperv_host_syncs``; the other hosts are still done,
and the step fails only when every host failed (:func:`panelflow.step.for_each`). A malformed record
(a VM without a GUID …) is reported and skipped; the rest of the host's records are written.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from panelflow.hooks.powershell import parse_records, powershell_session, ps_datetime
from panelflow.services.server_samples import MIB, Bytes
from panelflow.step import EndpointsFailed, StepReport, for_each

GIB = 1024 * MIB
VHD_EXTENSIONS = (".vhd", ".vhdx", ".avhd", ".avhdx")
WINDOWS_PATH = re.compile(r"^[A-Za-z]:\\(?:[^\\/:*?\"<>|\x00-\x1f]+\\)*[^\\/:*?\"<>|\x00-\x1f]+$")


class HyperVHostsFailed(EndpointsFailed):
    """Every Hyper-V host the step tried failed: the run fails, so Airflow retries it and alerts."""


# -- records: what the scripts print -----------------------------------------------------------

UtcTime = Annotated[datetime, BeforeValidator(ps_datetime)]
VmState = Annotated[str, Field(pattern=r"^[A-Za-z]+$")]


class _Record(BaseModel):
    model_config = ConfigDict(extra="ignore")


class NicRecord(_Record):
    Name: str = Field(min_length=1)
    InterfaceDescription: str | None = None
    MacAddress: str | None = None
    LinkSpeedBps: int | None = Field(default=None, ge=0)
    Status: str | None = None


class _OsRecord(_Record):
    """Both the hardware and the hypervisor inventory name the host's Windows."""

    OsName: str | None = None
    OsVersion: str | None = None


class HardwareRecord(_OsRecord):
    ComputerName: str | None = None
    Manufacturer: str | None = None
    Model: str | None = None
    SerialNumber: str | None = None
    BiosManufacturer: str | None = None
    BiosVersion: str | None = None
    BiosReleaseDate: UtcTime | None = None
    ProcessorName: str | None = None
    ProcessorSockets: int = Field(ge=1)
    ProcessorCores: int = Field(ge=1)
    LogicalProcessors: int = Field(ge=1)
    TotalPhysicalMemory: Bytes = Field(gt=0)
    NetworkAdapters: list[Any] = []


class HostRecord(_OsRecord):
    ComputerName: str = Field(min_length=1)
    DefaultVmVersion: str | None = None
    LogicalProcessorCount: int = Field(ge=1)
    MemoryCapacity: Bytes = Field(gt=0)
    VirtualMachinePath: str | None = None
    VirtualHardDiskPath: str | None = None
    NumaSpanningEnabled: bool | None = None


class DiskRecord(_Record):
    Path: str = Field(min_length=1)
    ControllerType: str | None = None
    ControllerNumber: int | None = None
    ControllerLocation: int | None = None
    VhdType: Literal["Fixed", "Dynamic", "Differencing"] | None = None
    VhdFormat: Literal["VHD", "VHDX", "VHDSet"] | None = None
    FileSize: Bytes | None = None
    Size: Bytes | None = None


class AdapterRecord(_Record):
    Id: str = Field(min_length=1)
    Name: str
    SwitchName: str | None = None
    MacAddress: str | None = None
    DynamicMacAddressEnabled: bool | None = None
    IPAddresses: list[str] = []
    VlanId: int | None = None


class VMRecord(_Record):
    Name: str = Field(min_length=1)
    Id: uuid.UUID
    State: VmState
    CPUUsage: int | None = Field(default=None, ge=0, le=100)
    MemoryAssigned: Bytes | None = None
    MemoryDemand: Bytes | None = None
    MemoryStartup: Bytes | None = None
    DynamicMemoryEnabled: bool | None = None
    Uptime: int | None = Field(default=None, ge=0)
    Generation: Literal[1, 2]
    ProcessorCount: int = Field(ge=1)
    Version: str | None = None
    Path: str | None = None
    Disks: list[DiskRecord] = []
    NetworkAdapters: list[AdapterRecord] = []


class VMStatsRecord(_Record):
    Name: str | None = None
    Id: uuid.UUID
    State: VmState
    CPUUsage: int = Field(ge=0, le=100)
    MemoryAssigned: Bytes
    MemoryDemand: Bytes | None = None
    Uptime: int = Field(ge=0)


class HypervisorStatsRecord(_Record):
    ComputerName: str | None = None
    HypervisorRunTimePercent: float = Field(ge=0)
    VMs: list[Any] = []


class StorageRecord(_Record):
    Path: str = Field(min_length=1)
    Volume: str | None = None
    DiskNumber: int | None = None
    StoragePool: str | None = None
    MediaTypes: list[str] = []
    BusTypes: list[str] = []


class ActionVM(_Record):
    """The VM as the group-action scripts return it (they add their own fields)."""

    Name: str
    Id: uuid.UUID
    State: VmState
    Generation: Literal[1, 2] | None = None
    ProcessorCount: int | None = Field(default=None, ge=1)
    MemoryStartup: Bytes | None = None


class CreatedVM(ActionVM):
    Created: bool
    Disks: list[DiskRecord] = []


class DiskActionResult(ActionVM):
    Disk: DiskRecord
    Created: bool = False
    Attached: bool = False
    Resized: bool = False


class CheckpointResult(ActionVM):
    CheckpointId: uuid.UUID
    CheckpointName: str
    CreationTime: UtcTime | None = None
    Created: bool


class ArchivedRecord(_Record):
    Path: str = Field(min_length=1)
    ArchivePath: str = Field(min_length=1)
    FileSize: Bytes | None = None


class DeletedVM(_Record):
    Found: bool
    Id: str | None = None
    Name: str | None = None
    Archived: list[ArchivedRecord] = []


class RemovalRecord(_Record):
    Path: str
    Deleted: bool
    Missing: bool = False
    Error: str | None = None


def one(model, rows: list, report: StepReport, what: str):
    """A script's single object, or None (reported) when it printed nothing valid."""
    records = parse_records(model, rows[:1] or [None], report, what)
    return records[0] if records else None


def columns(names) -> str:
    return ", ".join(names)


# -- a VM's disks: the inventory writes them, and so do the group actions that change them -----

DISK_TYPES = {"vm_guid": "uuid", "path": "text", "controller_type": "text", "controller_number": "integer",
              "controller_location": "integer", "vhd_type": "text", "vhd_format": "text", "file_size_bytes": "bigint",
              "size_bytes": "bigint"}
DISK_DATA = [c for c in DISK_TYPES if c not in ("vm_guid", "path")]


def disk_row(vm_guid, d: DiskRecord) -> dict:
    return {"vm_guid": str(vm_guid), "path": d.Path, "controller_type": d.ControllerType,
            "controller_number": d.ControllerNumber, "controller_location": d.ControllerLocation,
            "vhd_type": d.VhdType, "vhd_format": d.VhdFormat, "file_size_bytes": d.FileSize, "size_bytes": d.Size}


def unsafe_path(path: str) -> bool:
    """Not an absolute local Windows path, or one climbing out with ``.``/``..``: never sent to a host."""
    return not WINDOWS_PATH.match(path) or any(seg in (".", "..") for seg in path.split("\\"))


# -- hosts ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Host:
    id: int
    name: str
    fqdn: str
    conn_id: str
    server_id: int | None
    archive_path: str


_HOST = "SELECT id, name, fqdn, conn_id, server_id, vhd_archive_path"
_HOSTS = _HOST + " FROM hyperv_hosts WHERE enabled"

_MARK = """
INSERT INTO hyperv_host_syncs AS s (host_id, task, last_attempt_at, last_synced_at, last_error)
VALUES (%(host)s, %(task)s, %(at)s, CASE WHEN %(error)s::text IS NULL THEN %(at)s END, %(error)s)
ON CONFLICT (host_id, task) DO UPDATE
SET last_attempt_at = EXCLUDED.last_attempt_at, last_error = EXCLUDED.last_error,
    last_synced_at = coalesce(EXCLUDED.last_synced_at, s.last_synced_at)
"""


def hosts(conn, ids: list[int] | None = None) -> list[Host]:
    """The enabled hosts (of ``ids``, when given), by id."""
    if ids is None:
        rows = conn.execute(_HOSTS + " ORDER BY id").fetchall()
    else:
        rows = conn.execute(_HOSTS + " AND id = ANY(%s::bigint[]) ORDER BY id", (ids,)).fetchall()
    return [Host(*r) for r in rows]


def host_named(conn, name: str) -> tuple[Host, bool] | None:
    """The host called ``name`` (in any case), and whether it is enabled; None when there is none."""
    row = conn.execute(_HOST + ", enabled FROM hyperv_hosts WHERE lower(name) = lower(%s)", (name,)).fetchone()
    return None if row is None else (Host(*row[:6]), row[6])


def host_report(*keys: str) -> StepReport:
    return StepReport().zero("hosts", "hosts_synced", "hosts_failed", *keys)


def for_each_host(conn, targets: list[Host], task: str, at: datetime, report: StepReport, log,
                  work: Callable[[Any, Host], None]) -> dict:
    """``work(hook, host)`` per host in its own PowerShell session, under :func:`for_each`'s rule;
    each host's outcome is also kept in ``hyperv_host_syncs`` for ``task``."""
    from airflow.exceptions import AirflowException

    from panelflow.hooks.powershell import PowerShellError

    def attempt(host: Host) -> None:
        with powershell_session(host.conn_id, log) as hook:
            work(hook, host)
        conn.execute(_MARK, {"host": host.id, "task": task, "at": at, "error": None})
        report.add("hosts_synced")

    outcome = for_each(targets, attempt, report=report, kind="host", expected=(PowerShellError, AirflowException),
                       log=log, everything_failed=HyperVHostsFailed, what="Hyper-V host",
                       on_failure=lambda host, _exc, error: conn.execute(
                           _MARK, {"host": host.id, "task": task, "at": at, "error": error}))
    summary = report.as_dict()
    summary["failed_hosts"] = outcome.failed
    if log is not None and summary["skipped"]:
        log.warning("%s: %s", task, summary["skipped"])
    return summary


class VMPathsRecord(_Record):
    """Where a VM keeps its files now (``hyperv/get_vm_paths``): its folder and each slot's disk."""

    Id: uuid.UUID
    Name: str | None = None
    Path: str | None = None
    Disks: list[DiskRecord] = []
