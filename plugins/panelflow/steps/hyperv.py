"""Hyper-V over PowerShell remoting: HyperVHomeBackendThread, GroupActionWorkVPS and the VPS threshold alerts.

Every Hyper-V host is a ``hyperv_hosts`` row (0018) naming the Airflow psrp connection that reaches
it; each step opens one PowerShell session per host (:func:`panelflow.hooks.powershell.open_powershell`)
and runs the scripts of ``include/powershell/hyperv`` and ``include/powershell/windows`` with their
values as PSRP parameters. A host that cannot be reached, refuses the credentials, times out or whose
script fails is named in the summary (``failed_hosts``) and recorded in ``hyperv_host_syncs``; the
other hosts are still done, and the step fails only when every host failed. A malformed record
(a VM without a GUID …) is reported and skipped; the rest of the host's records are written.

HyperVHomeBackendThread

1. :func:`sync_bare_metal_inventory` — Win32_ComputerSystem/BIOS/Processor/OperatingSystem and the
   physical network adapters → ``hyperv_host_hardware``, ``hyperv_host_nics``.
2. :func:`sync_hypervisor_inventory` — Get-VMHost → ``hyperv_hypervisors``; Get-VM with its disks
   (Get-VMHardDiskDrive | Get-VHD) and network adapters → ``hyperv_vms`` (keyed by the VM's GUID,
   which survives live migration), ``hyperv_vm_disks``, ``hyperv_vm_network_adapters``. A VM no
   longer on its host is marked ``deleted_at`` (never dropped), unless one of the host's records was
   malformed in this run (it may be that VM).
3. :func:`sync_server_resource_stats` — services, volumes, CPU and memory of the host → its
   ``servers`` row's ``server_stats`` / ``server_volume_stats`` / ``server_services`` (the monitors'
   tables), the hypervisor's run time → ``hyperv_host_stats``, and every VM's CPU/memory/uptime →
   ``hyperv_vm_stats``, all keyed by the run's clock.

GroupActionWorkVPS

1. :func:`process_vps_group_actions` — the ``vps`` queue of ``group_action_jobs`` through
   :func:`panelflow.services.group_actions.process_group_actions`. Payloads (sizes in MB/GB, as the panel
   enters them)::

       create_vm    host, name, memory_mb, disk_gb, generation? (2), processor_count? (1),
                    vhd_path?, switch_name?, customer_id?, subscription_id?
       start_vm     vm_id (GUID) | host + name
       stop_vm      vm_id | host + name, turn_off? (false: guest shutdown)
       restart_vm   vm_id | host + name, hard? (false: shutdown + start)
       resize_vm    vm_id | host + name, processor_count? memory_mb? (at least one)
       add_disk     vm_id | host + name, size_gb, path | file_name (in the host's VHD folder), vhd_type? (Dynamic)
       expand_disk  vm_id | host + name, path, size_gb
       checkpoint_vm vm_id | host + name, checkpoint_name
       delete_vm    vm_id | host + name

   Every action sets a state, so a retried job does it once: create_vm looks the VM up by name
   first, start/stop leave a VM already in that state alone, add_disk neither recreates nor
   reattaches, expand_disk never shrinks and is a no-op at the size, checkpoint_vm looks the name
   up, delete_vm of a VM already gone succeeds (and still archives disks the panel knew of).
   restart_vm is the exception: retried after a lost answer, it restarts again. The host's error
   (Hyper-V refused) fails the job with the host's message; a host that cannot be reached or times
   out puts the job back for a later run (and the rest of the run's jobs for that host too, untried).
   Successful jobs update the panel's rows (VM state, size, disks, deletion, archived disks).
2. :func:`update_disk_storage_types` — for each live VM disk, the physical media its file lives
   on (path → partition → disk → Storage Spaces pool → Get-PhysicalDisk MediaType/BusType):
   SSD, HDD, NVMe, SCM, Mixed (a tiered pool), Unspecified or Network (an SMB path).
3. :func:`delete_archived_vhd_files` — archived disks older than ``vhd_archive_days`` (7) before the
   run's clock, at most ``vhd_delete_batch`` (100) per run, removed on their host by a script that
   deletes only virtual disk files inside the host's archive folder (checked here first, and again
   on the host). A file already gone counts as deleted.

ProvisioningWork's "Generate O365/CSP and VPS threshold alerts": :func:`generate_vps_threshold_alerts`
is the VPS half (the O365/CSP half is :func:`panelflow.steps.partner_center.generate_threshold_alerts`).

Clock: ``interval.end`` only — samples, sync times, deletions and alerts are all keyed by it.
"""

from __future__ import annotations

import json
import ntpath
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from panelflow.step import StepReport
from panelflow.services.group_actions import JobDeferred, JobRejected, process_group_actions
from panelflow.hooks.powershell import byte_count, parse_records, ps_datetime
from panelflow.services.outbox import enqueue
from panelflow.hooks.powershell import close_powershell, open_powershell, powershell_session
from panelflow.steps.server_stats import MIB, parse_sample, write_server_sample

BACKEND = "vps"
ACTIONS = ("create_vm", "start_vm", "stop_vm", "restart_vm", "resize_vm", "add_disk", "expand_disk", "checkpoint_vm",
           "delete_vm")
GIB = 1024 * MIB
VHD_ARCHIVE_DAYS = 7
VHD_DELETE_BATCH = 100
STORAGE_PATHS_PER_HOST = 500
CPU_WINDOW_MINUTES = 30
ALERT_TEMPLATE = "vps_threshold_alert"
EMAIL_RE = r"^[^@[:space:]]+@[^@[:space:]]+\.[^@[:space:]]+$"
VHD_EXTENSIONS = (".vhd", ".vhdx", ".avhd", ".avhdx")
METRIC_LABELS = {"cpu": "CPU", "memory": "memory", "disk": "disk"}


class HyperVHostsFailed(RuntimeError):
    """Every Hyper-V host the step tried failed: the run fails, so Airflow retries it and alerts."""


# -- records: what the scripts print -----------------------------------------------------------

Bytes = Annotated[int, BeforeValidator(byte_count), Field(ge=0)]
UtcTime = Annotated[datetime, BeforeValidator(ps_datetime)]


class _Record(BaseModel):
    model_config = ConfigDict(extra="ignore")


class NicRecord(_Record):
    Name: str = Field(min_length=1)
    InterfaceDescription: str | None = None
    MacAddress: str | None = None
    LinkSpeedBps: int | None = Field(default=None, ge=0)
    Status: str | None = None


class HardwareRecord(_Record):
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
    OsName: str | None = None
    OsVersion: str | None = None
    NetworkAdapters: list[Any] = []


class HostRecord(_Record):
    ComputerName: str = Field(min_length=1)
    OsName: str | None = None
    OsVersion: str | None = None
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


VmState = Annotated[str, Field(pattern=r"^[A-Za-z]+$")]


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


# -- hosts ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Host:
    id: int
    name: str
    fqdn: str
    conn_id: str
    server_id: int | None
    archive_path: str


_HOSTS = "SELECT id, name, fqdn, conn_id, server_id, vhd_archive_path FROM hyperv_hosts WHERE enabled"

_MARK = """
INSERT INTO hyperv_host_syncs AS s (host_id, task, last_attempt_at, last_synced_at, last_error)
VALUES (%(host)s, %(task)s, %(at)s, CASE WHEN %(error)s::text IS NULL THEN %(at)s END, %(error)s)
ON CONFLICT (host_id, task) DO UPDATE
SET last_attempt_at = EXCLUDED.last_attempt_at, last_error = EXCLUDED.last_error,
    last_synced_at = coalesce(EXCLUDED.last_synced_at, s.last_synced_at)
"""


def _hosts(conn, ids: list[int] | None = None) -> list[Host]:
    if ids is None:
        rows = conn.execute(_HOSTS + " ORDER BY id").fetchall()
    else:
        rows = conn.execute(_HOSTS + " AND id = ANY(%s::bigint[]) ORDER BY id", (ids,)).fetchall()
    return [Host(*r) for r in rows]


def _report(*keys: str) -> StepReport:
    report = StepReport()
    for key in ("hosts", "hosts_synced", "hosts_failed", *keys):
        report.add(key, 0)
    return report


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:300]


def _for_each_host(conn, hosts: list[Host], task: str, at: datetime, report: StepReport, log,
                   work: Callable[[Any, Host], None]) -> dict:
    """``work(hook, host)`` per host in its own PowerShell session; failures named, not fatal until all fail."""
    from airflow.exceptions import AirflowException

    from panelflow.hooks.powershell import PowerShellError

    failed: list[str] = []
    for host in hosts:
        report.add("hosts")
        error = None
        try:
            with powershell_session(host.conn_id, log) as hook:
                work(hook, host)
        except (PowerShellError, AirflowException) as exc:
            error = f"{type(exc).__name__}: {_first_line(exc)}"
        conn.execute(_MARK, {"host": host.id, "task": task, "at": at, "error": error})
        if error is None:
            report.add("hosts_synced")
            continue
        report.add("hosts_failed")
        failed.append(host.name)
        report.skip(f"host not synced: {error}", f"host {host.name}")
        if log is not None:
            log.warning("%s: host %s failed: %s", task, host.name, error)
    summary = report.as_dict()
    summary["failed_hosts"] = failed
    if hosts and len(failed) == len(hosts):
        raise HyperVHostsFailed(f"{task}: every Hyper-V host failed: {summary['skipped_examples'][:5]}")
    if log is not None and summary["skipped"]:
        log.warning("%s: %s", task, summary["skipped"])
    return summary


def _one(model, rows: list, report: StepReport, what: str):
    records = parse_records(model, rows[:1] or [None], report, what)
    return records[0] if records else None


def _columns(names) -> str:
    return ", ".join(names)


# -- 1. bare-metal inventory ------------------------------------------------------------------

_HW_DATA = ("manufacturer", "model", "serial_number", "bios_manufacturer", "bios_version", "bios_release_date",
            "cpu_model", "cpu_sockets", "cpu_cores", "cpu_logical_processors", "memory_bytes", "os_name", "os_version")
_UPSERT_HARDWARE = f"""
INSERT INTO hyperv_host_hardware AS h (host_id, {_columns(_HW_DATA)}, synced_at, changed_at)
VALUES (%(host)s, {", ".join(f"%({c})s" for c in _HW_DATA)}, %(at)s, %(at)s)
ON CONFLICT (host_id) DO UPDATE
SET {", ".join(f"{c} = EXCLUDED.{c}" for c in _HW_DATA)},
    synced_at = EXCLUDED.synced_at,
    changed_at = CASE WHEN ({_columns("h." + c for c in _HW_DATA)}) IS DISTINCT FROM
                           ({_columns("EXCLUDED." + c for c in _HW_DATA)})
                      THEN EXCLUDED.changed_at ELSE h.changed_at END
WHERE h.synced_at <= EXCLUDED.synced_at
RETURNING (h.xmax = 0) AS inserted, h.changed_at = %(at)s AS changed
"""

_UPSERT_NICS = """
INSERT INTO hyperv_host_nics AS n (host_id, name, description, mac_address, link_speed_bps, status, synced_at)
SELECT %(host)s, x.name, x.description, x.mac_address, x.link_speed_bps, x.status, %(at)s
FROM jsonb_to_recordset(%(rows)s::jsonb) AS x(name text, description text, mac_address text, link_speed_bps bigint,
                                              status text)
ON CONFLICT (host_id, name) DO UPDATE
SET description = EXCLUDED.description, mac_address = EXCLUDED.mac_address, link_speed_bps = EXCLUDED.link_speed_bps,
    status = EXCLUDED.status, synced_at = EXCLUDED.synced_at
WHERE n.synced_at <= EXCLUDED.synced_at
"""

_GONE_NICS = """
DELETE FROM hyperv_host_nics WHERE host_id = %(host)s AND synced_at < %(at)s AND NOT (name = ANY(%(names)s::text[]))
"""


def sync_bare_metal_inventory(panel_db, interval, log=None) -> dict:
    """Sync HyperV bare metal inventory."""
    report = _report("hardware_added", "hardware_changed", "nics_seen", "nics_removed")
    at = interval.end

    with panel_db.get_conn() as conn:
        conn.autocommit = True

        def work(hook, host: Host) -> None:
            rows = hook.run_script("windows/get_hardware_inventory")
            hw = _one(HardwareRecord, rows, report, f"host {host.name} hardware")
            if hw is None:
                return
            nics = {n.Name: n for n in parse_records(NicRecord, hw.NetworkAdapters, report,
                                                     f"host {host.name} network adapter")}
            values = {"host": host.id, "at": at, "manufacturer": hw.Manufacturer, "model": hw.Model,
                      "serial_number": hw.SerialNumber, "bios_manufacturer": hw.BiosManufacturer,
                      "bios_version": hw.BiosVersion, "bios_release_date": hw.BiosReleaseDate,
                      "cpu_model": hw.ProcessorName, "cpu_sockets": hw.ProcessorSockets,
                      "cpu_cores": hw.ProcessorCores, "cpu_logical_processors": hw.LogicalProcessors,
                      "memory_bytes": hw.TotalPhysicalMemory, "os_name": hw.OsName, "os_version": hw.OsVersion}
            nic_rows = [{"name": n.Name, "description": n.InterfaceDescription, "mac_address": n.MacAddress,
                         "link_speed_bps": n.LinkSpeedBps, "status": n.Status} for n in nics.values()]
            with conn.transaction():
                written = conn.execute(_UPSERT_HARDWARE, values).fetchone()
                if written is not None:
                    report.add("hardware_added" if written[0] else "hardware_changed", int(written[0] or written[1]))
                conn.execute(_UPSERT_NICS, {"host": host.id, "at": at, "rows": json.dumps(nic_rows)})
                report.add("nics_seen", len(nic_rows))
                if len(nics) == len(hw.NetworkAdapters):   # a malformed adapter may be one of the missing
                    report.add("nics_removed", conn.execute(_GONE_NICS, {"host": host.id, "at": at,
                                                                         "names": list(nics)}).rowcount)

        return _for_each_host(conn, _hosts(conn), "bare_metal_inventory", at, report, log, work)


# -- 2. hypervisor inventory ------------------------------------------------------------------

_HV_DATA = ("computer_name", "os_name", "os_version", "default_vm_version", "logical_processors",
            "memory_capacity_bytes", "vm_path", "vhd_path", "numa_spanning")
_UPSERT_HYPERVISOR = f"""
INSERT INTO hyperv_hypervisors AS h (host_id, {_columns(_HV_DATA)}, synced_at, changed_at)
VALUES (%(host)s, {", ".join(f"%({c})s" for c in _HV_DATA)}, %(at)s, %(at)s)
ON CONFLICT (host_id) DO UPDATE
SET {", ".join(f"{c} = EXCLUDED.{c}" for c in _HV_DATA)},
    synced_at = EXCLUDED.synced_at,
    changed_at = CASE WHEN ({_columns("h." + c for c in _HV_DATA)}) IS DISTINCT FROM
                           ({_columns("EXCLUDED." + c for c in _HV_DATA)})
                      THEN EXCLUDED.changed_at ELSE h.changed_at END
WHERE h.synced_at <= EXCLUDED.synced_at
"""

_VM_TYPES = {"vm_guid": "uuid", "name": "text", "state": "text", "generation": "smallint", "processor_count": "integer",
             "memory_startup_bytes": "bigint", "memory_assigned_bytes": "bigint", "memory_demand_bytes": "bigint",
             "dynamic_memory": "boolean", "uptime_seconds": "bigint", "version": "text", "config_path": "text"}
_VM_DATA = [c for c in _VM_TYPES if c != "vm_guid"]
# what counts as a change of the VM (not its running figures: memory assigned, demand, uptime)
_VM_CONFIG = ("host_id", "name", "state", "generation", "processor_count", "memory_startup_bytes", "dynamic_memory",
              "version", "config_path")
_UPSERT_VMS = f"""
INSERT INTO hyperv_vms AS v (vm_guid, host_id, {_columns(_VM_DATA)}, first_seen_at, synced_at, changed_at)
SELECT x.vm_guid, %(host)s, {_columns("x." + c for c in _VM_DATA)}, %(at)s, %(at)s, %(at)s
FROM jsonb_to_recordset(%(rows)s::jsonb) AS x({", ".join(f"{c} {t}" for c, t in _VM_TYPES.items())})
ON CONFLICT (vm_guid) DO UPDATE
SET host_id = EXCLUDED.host_id, {", ".join(f"{c} = EXCLUDED.{c}" for c in _VM_DATA)},
    synced_at = EXCLUDED.synced_at, deleted_at = NULL,
    changed_at = CASE WHEN ({_columns("v." + c for c in _VM_CONFIG)}, v.deleted_at) IS DISTINCT FROM
                           ({_columns("EXCLUDED." + c for c in _VM_CONFIG)}, NULL::timestamptz)
                      THEN EXCLUDED.changed_at ELSE v.changed_at END
WHERE v.synced_at <= EXCLUDED.synced_at
RETURNING (v.xmax = 0) AS inserted
"""

_DISK_TYPES = {"vm_guid": "uuid", "path": "text", "controller_type": "text", "controller_number": "integer",
               "controller_location": "integer", "vhd_type": "text", "vhd_format": "text", "file_size_bytes": "bigint",
               "size_bytes": "bigint"}
_DISK_DATA = [c for c in _DISK_TYPES if c not in ("vm_guid", "path")]
_DISK_VHD = ("vhd_type", "vhd_format", "file_size_bytes", "size_bytes")   # unknown when Get-VHD failed: kept
_UPSERT_DISKS = f"""
INSERT INTO hyperv_vm_disks AS d (vm_id, path, {_columns(_DISK_DATA)}, first_seen_at, synced_at)
SELECT v.id, x.path, {_columns("x." + c for c in _DISK_DATA)}, %(at)s, %(at)s
FROM jsonb_to_recordset(%(rows)s::jsonb) AS x({", ".join(f"{c} {t}" for c, t in _DISK_TYPES.items())})
JOIN hyperv_vms v ON v.vm_guid = x.vm_guid
ON CONFLICT (vm_id, path) DO UPDATE
SET {", ".join(f"{c} = coalesce(EXCLUDED.{c}, d.{c})" if c in _DISK_VHD else f"{c} = EXCLUDED.{c}"
               for c in _DISK_DATA)},
    synced_at = EXCLUDED.synced_at
WHERE d.synced_at <= EXCLUDED.synced_at
"""

_GONE_DISKS = """
DELETE FROM hyperv_vm_disks d USING hyperv_vms v
WHERE d.vm_id = v.id AND v.vm_guid = ANY(%(vms)s::uuid[]) AND d.synced_at < %(at)s
"""

_ADAPTER_TYPES = {"vm_guid": "uuid", "adapter_id": "text", "name": "text", "switch_name": "text", "mac_address": "text",
                  "dynamic_mac": "boolean", "ip_addresses": "text[]", "vlan_id": "integer"}
_ADAPTER_DATA = [c for c in _ADAPTER_TYPES if c not in ("vm_guid", "adapter_id")]
_UPSERT_ADAPTERS = f"""
INSERT INTO hyperv_vm_network_adapters AS a (vm_id, adapter_id, {_columns(_ADAPTER_DATA)}, synced_at)
SELECT v.id, x.adapter_id, {_columns("x." + c for c in _ADAPTER_DATA)}, %(at)s
FROM jsonb_to_recordset(%(rows)s::jsonb) AS x({", ".join(f"{c} {t}" for c, t in _ADAPTER_TYPES.items())})
JOIN hyperv_vms v ON v.vm_guid = x.vm_guid
ON CONFLICT (vm_id, adapter_id) DO UPDATE
SET {", ".join(f"{c} = EXCLUDED.{c}" for c in _ADAPTER_DATA)}, synced_at = EXCLUDED.synced_at
WHERE a.synced_at <= EXCLUDED.synced_at
"""

_GONE_ADAPTERS = """
DELETE FROM hyperv_vm_network_adapters a USING hyperv_vms v
WHERE a.vm_id = v.id AND v.vm_guid = ANY(%(vms)s::uuid[]) AND a.synced_at < %(at)s
"""

_MARK_DELETED = """
UPDATE hyperv_vms SET deleted_at = %(at)s, changed_at = %(at)s
WHERE host_id = %(host)s AND deleted_at IS NULL AND synced_at < %(at)s AND NOT (vm_guid = ANY(%(seen)s::uuid[]))
RETURNING name
"""


def _disk_row(vm_guid, d: DiskRecord) -> dict:
    return {"vm_guid": str(vm_guid), "path": d.Path, "controller_type": d.ControllerType,
            "controller_number": d.ControllerNumber, "controller_location": d.ControllerLocation,
            "vhd_type": d.VhdType, "vhd_format": d.VhdFormat, "file_size_bytes": d.FileSize, "size_bytes": d.Size}


def sync_hypervisor_inventory(panel_db, interval, log=None) -> dict:
    """Sync Hyper visor inventory."""
    report = _report("hypervisors_synced", "vms_seen", "vms_added", "vms_marked_deleted", "disks_seen",
                     "adapters_seen")
    at = interval.end

    with panel_db.get_conn() as conn:
        conn.autocommit = True

        def work(hook, host: Host) -> None:
            host_rows = hook.run_script("hyperv/get_host")
            vm_rows = hook.run_script("hyperv/get_vms")
            hv = _one(HostRecord, host_rows, report, f"host {host.name} Get-VMHost")
            vms = {vm.Id: vm for vm in parse_records(VMRecord, vm_rows, report, f"host {host.name} VM")}
            complete = len(vms) == len(vm_rows)
            vm_rows_sql = [{"vm_guid": str(vm.Id), "name": vm.Name, "state": vm.State, "generation": vm.Generation,
                            "processor_count": vm.ProcessorCount, "memory_startup_bytes": vm.MemoryStartup,
                            "memory_assigned_bytes": vm.MemoryAssigned, "memory_demand_bytes": vm.MemoryDemand,
                            "dynamic_memory": vm.DynamicMemoryEnabled, "uptime_seconds": vm.Uptime,
                            "version": vm.Version, "config_path": vm.Path} for vm in vms.values()]
            disks = [_disk_row(vm.Id, d) for vm in vms.values() for d in {d.Path: d for d in vm.Disks}.values()]
            adapters = [{"vm_guid": str(vm.Id), "adapter_id": a.Id, "name": a.Name, "switch_name": a.SwitchName,
                         "mac_address": a.MacAddress, "dynamic_mac": a.DynamicMacAddressEnabled,
                         "ip_addresses": a.IPAddresses, "vlan_id": a.VlanId}
                        for vm in vms.values() for a in {a.Id: a for a in vm.NetworkAdapters}.values()]
            seen = [str(g) for g in vms]
            with conn.transaction():
                if hv is not None:
                    conn.execute(_UPSERT_HYPERVISOR, {
                        "host": host.id, "at": at, "computer_name": hv.ComputerName, "os_name": hv.OsName,
                        "os_version": hv.OsVersion, "default_vm_version": hv.DefaultVmVersion,
                        "logical_processors": hv.LogicalProcessorCount, "memory_capacity_bytes": hv.MemoryCapacity,
                        "vm_path": hv.VirtualMachinePath, "vhd_path": hv.VirtualHardDiskPath,
                        "numa_spanning": hv.NumaSpanningEnabled})
                    report.add("hypervisors_synced")
                written = conn.execute(_UPSERT_VMS, {"host": host.id, "at": at,
                                                     "rows": json.dumps(vm_rows_sql)}).fetchall()
                report.add("vms_seen", len(vm_rows_sql))
                report.add("vms_added", sum(1 for (inserted,) in written if inserted))
                conn.execute(_UPSERT_DISKS, {"at": at, "rows": json.dumps(disks)})
                conn.execute(_GONE_DISKS, {"at": at, "vms": seen})
                conn.execute(_UPSERT_ADAPTERS, {"at": at, "rows": json.dumps(adapters)})
                conn.execute(_GONE_ADAPTERS, {"at": at, "vms": seen})
                report.add("disks_seen", len(disks))
                report.add("adapters_seen", len(adapters))
                if complete:
                    gone = conn.execute(_MARK_DELETED, {"host": host.id, "at": at, "seen": seen}).fetchall()
                    report.add("vms_marked_deleted", len(gone))
                elif log is not None:
                    log.warning("host %s: a VM record was malformed; no VM is marked deleted this run", host.name)

        return _for_each_host(conn, _hosts(conn), "hypervisor_inventory", at, report, log, work)


# -- 3. resource stats ------------------------------------------------------------------------

_HOST_STATS = """
INSERT INTO hyperv_host_stats (host_id, sampled_at, cpu_percent, hypervisor_run_time_percent, memory_total_mb,
                               memory_available_mb, vms_total, vms_running)
VALUES (%(host)s, %(at)s, %(cpu)s, %(run_time)s, %(total)s, %(available)s, %(vms)s, %(running)s)
ON CONFLICT (host_id, sampled_at) DO NOTHING
"""

_VM_STATS = """
WITH x AS (
    SELECT * FROM jsonb_to_recordset(%(rows)s::jsonb) AS x(vm_guid uuid, name text, state text, cpu_percent numeric,
                                                          memory_assigned_mb bigint, memory_demand_mb bigint,
                                                          uptime_seconds bigint)
), written AS (
    INSERT INTO hyperv_vm_stats (vm_id, sampled_at, state, cpu_percent, memory_assigned_mb, memory_demand_mb,
                                 uptime_seconds)
    SELECT v.id, %(at)s, x.state, x.cpu_percent, x.memory_assigned_mb, x.memory_demand_mb, x.uptime_seconds
    FROM x JOIN hyperv_vms v ON v.vm_guid = x.vm_guid
    ON CONFLICT (vm_id, sampled_at) DO NOTHING
    RETURNING 1
)
SELECT (SELECT count(*) FROM written),
       (SELECT array_agg(x.name ORDER BY x.name) FROM x WHERE NOT EXISTS (SELECT 1 FROM hyperv_vms v
                                                                      WHERE v.vm_guid = x.vm_guid))
"""


def sync_server_resource_stats(panel_db, interval, log=None) -> dict:
    """Sync server services, Hyper visors, volume, CPU, memory."""
    report = _report("samples_written", "volume_samples_written", "services_updated", "services_removed",
                     "hosts_without_server", "host_samples_written", "vm_samples_written", "vms_not_in_inventory")
    at = interval.end

    with panel_db.get_conn() as conn:
        conn.autocommit = True

        def work(hook, host: Host) -> None:
            server_rows = hook.run_script("windows/get_server_stats")
            hv_rows = hook.run_script("hyperv/get_vm_stats")
            parsed = parse_sample(server_rows[0] if server_rows else None, report, f"host {host.name}")
            hv = _one(HypervisorStatsRecord, hv_rows, report, f"host {host.name} hypervisor")
            vms = parse_records(VMStatsRecord, hv.VMs if hv else [], report, f"host {host.name} VM")
            sample = parsed[0] if parsed else None
            vm_rows = [{"vm_guid": str(vm.Id), "name": vm.Name, "state": vm.State, "cpu_percent": vm.CPUUsage,
                        "memory_assigned_mb": vm.MemoryAssigned // MIB,
                        "memory_demand_mb": None if vm.MemoryDemand is None else vm.MemoryDemand // MIB,
                        "uptime_seconds": vm.Uptime} for vm in {vm.Id: vm for vm in vms}.values()]
            with conn.transaction():
                if parsed is not None and host.server_id is not None:
                    for key, n in write_server_sample(conn, host.server_id, at, *parsed).items():
                        report.add(key, n)
                elif parsed is not None:
                    report.add("hosts_without_server")
                if sample is not None or hv is not None:
                    report.add("host_samples_written", conn.execute(_HOST_STATS, {
                        "host": host.id, "at": at,
                        "cpu": None if sample is None else round(min(sample.CpuPercent, 100.0), 2),
                        "run_time": None if hv is None else round(min(hv.HypervisorRunTimePercent, 100.0), 2),
                        "total": None if sample is None else sample.MemoryTotalBytes // MIB,
                        "available": None if sample is None else sample.MemoryAvailableBytes // MIB,
                        "vms": len(vm_rows), "running": sum(1 for r in vm_rows if r["state"] == "Running")}).rowcount)
                written, unknown = conn.execute(_VM_STATS, {"at": at, "rows": json.dumps(vm_rows)}).fetchone()
            report.add("vm_samples_written", written)
            report.add("vms_not_in_inventory", len(unknown or []))
            for name in unknown or []:
                report.skip("VM not in the inventory yet (no sample kept)", f"host {host.name} VM {name}")

        return _for_each_host(conn, _hosts(conn), "server_resource_stats", at, report, log, work)


# -- GroupActionWorkVPS 1. the VPS group-action queue -----------------------------------------

_VM_BY_GUID = """
SELECT v.id, v.vm_guid, v.name, v.host_id, v.deleted_at FROM hyperv_vms v WHERE v.vm_guid = %s
"""

_VM_BY_NAME = """
SELECT v.id, v.vm_guid, v.name, v.host_id, v.deleted_at FROM hyperv_vms v
WHERE v.host_id = %s AND lower(v.name) = lower(%s) AND v.deleted_at IS NULL
"""

_PANEL_CREATED = """
INSERT INTO hyperv_vms AS v (vm_guid, host_id, name, state, generation, processor_count, memory_startup_bytes,
                             customer_id, subscription_id, first_seen_at, synced_at, changed_at)
VALUES (%(guid)s, %(host)s, %(name)s, %(state)s, %(generation)s, %(cpus)s, %(memory)s, %(customer)s, %(subscription)s,
        %(at)s, %(at)s, %(at)s)
ON CONFLICT (vm_guid) DO UPDATE
SET host_id = EXCLUDED.host_id, name = EXCLUDED.name, state = EXCLUDED.state, generation = EXCLUDED.generation,
    processor_count = EXCLUDED.processor_count, memory_startup_bytes = EXCLUDED.memory_startup_bytes,
    customer_id = coalesce(EXCLUDED.customer_id, v.customer_id),
    subscription_id = coalesce(EXCLUDED.subscription_id, v.subscription_id),
    deleted_at = NULL, changed_at = EXCLUDED.changed_at
"""

_PANEL_STATE = """
UPDATE hyperv_vms SET name = %(name)s, state = %(state)s,
       generation = coalesce(%(generation)s, generation), processor_count = coalesce(%(cpus)s, processor_count),
       memory_startup_bytes = coalesce(%(memory)s, memory_startup_bytes), changed_at = %(at)s
WHERE vm_guid = %(guid)s
  AND (name, state, generation, processor_count, memory_startup_bytes) IS DISTINCT FROM
      (%(name)s, %(state)s, coalesce(%(generation)s, generation), coalesce(%(cpus)s, processor_count),
       coalesce(%(memory)s, memory_startup_bytes))
"""

_PANEL_DISK = f"""
INSERT INTO hyperv_vm_disks AS d (vm_id, path, {_columns(_DISK_DATA)}, first_seen_at, synced_at)
SELECT v.id, %(path)s, {", ".join(f"%({c})s" for c in _DISK_DATA)}, %(at)s, %(at)s
FROM hyperv_vms v WHERE v.vm_guid = %(vm_guid)s
ON CONFLICT (vm_id, path) DO UPDATE
SET {", ".join(f"{c} = coalesce(EXCLUDED.{c}, d.{c})" for c in _DISK_DATA)}
"""

_PANEL_DELETED = """
WITH vm AS (
    UPDATE hyperv_vms SET deleted_at = coalesce(deleted_at, %(at)s), changed_at = %(at)s
    WHERE vm_guid = %(guid)s RETURNING id
), disks AS (
    DELETE FROM hyperv_vm_disks WHERE vm_id IN (SELECT id FROM vm) RETURNING 1
)
INSERT INTO hyperv_archived_vhds (host_id, vm_guid, vm_name, original_path, archive_path, file_size_bytes, archived_at)
SELECT %(host)s, %(guid)s, %(name)s, x.path, x.archive_path, x.file_size_bytes, %(at)s
FROM jsonb_to_recordset(%(rows)s::jsonb) AS x(path text, archive_path text, file_size_bytes bigint)
ON CONFLICT (host_id, archive_path) DO NOTHING
"""

_WINDOWS_PATH = re.compile(r"^[A-Za-z]:\\(?:[^\\/:*?\"<>|\x00-\x1f]+\\)*[^\\/:*?\"<>|\x00-\x1f]+$")


def _text(payload: dict, key: str, required: bool = True, limit: int = 255) -> str | None:
    value = payload.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise JobRejected(f"payload has no {key!r}")
        return None
    if not isinstance(value, str):
        raise JobRejected(f"payload {key!r} is not a string")
    if len(value) > limit or any(ord(ch) < 32 for ch in value):
        raise JobRejected(f"payload {key!r} is longer than {limit} characters or holds control characters")
    return value


def _int(payload: dict, key: str, low: int, high: int, default: int | None = None) -> int | None:
    value = payload.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise JobRejected(f"payload {key!r} must be a whole number from {low} to {high}")
    return value


def _vhd_path(payload: dict, key: str, required: bool = True) -> str | None:
    path = _text(payload, key, required, limit=260)
    if path is None:
        return None
    if not _WINDOWS_PATH.match(path) or not path.lower().endswith((".vhd", ".vhdx")) or \
            any(seg in (".", "..") for seg in path.split("\\")):
        raise JobRejected(f"payload {key!r} is not an absolute .vhdx/.vhd path: {path!r}")
    return path


def _i64(value: int | None):
    """Byte counts as PSRP Int64 (pypsrp would send any Python int as an Int32)."""
    from pypsrp.serializer import TaggedValue

    return None if value is None else TaggedValue("I64", value)


def _parse(model, rows: list, host: Host, script: str):
    from pydantic import ValidationError

    if not rows:
        raise JobRejected(f"{host.name}: {script} returned nothing")
    try:
        return model.model_validate(rows[0])
    except ValidationError as exc:
        first = exc.errors()[0]
        raise JobRejected(f"{host.name}: {script} returned a malformed record: "
                          f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from None


class _VpsJobs:
    """The handler of the ``vps`` queue: one PowerShell session per host for the whole run."""

    def __init__(self, conn, at: datetime, log):
        self.conn, self.at, self.log = conn, at, log
        self.hooks: dict[str, Any] = {}
        self.down: dict[str, str] = {}

    def close(self) -> None:
        for hook in self.hooks.values():
            close_powershell(hook, self.log)
        self.hooks.clear()

    # -- reaching the host
    def _host(self, name: str) -> Host:
        row = self.conn.execute("SELECT id, name, fqdn, conn_id, server_id, vhd_archive_path, enabled"
                                " FROM hyperv_hosts WHERE lower(name) = lower(%s)", (name,)).fetchone()
        if row is None:
            raise JobRejected(f"no Hyper-V host {name!r}")
        if not row[6]:
            raise JobRejected(f"Hyper-V host {row[1]} is disabled")
        return Host(*row[:6])

    def run(self, host: Host, script: str, parameters: dict) -> list:
        from airflow.exceptions import AirflowException

        from panelflow.hooks.powershell import PowerShellOutputError, PowerShellScriptError, PowerShellUnavailable

        if host.conn_id in self.down:
            raise JobDeferred(f"{host.name} not tried: unreachable earlier in this run ({self.down[host.conn_id]})")
        try:
            hook = self.hooks.get(host.conn_id)
            if hook is None:
                hook = self.hooks[host.conn_id] = open_powershell(host.conn_id)
            return hook.run_script(script, parameters)
        except PowerShellScriptError as exc:
            raise JobRejected(f"{host.name}: {'; '.join(exc.errors) or 'the script failed'}") from None
        except PowerShellOutputError as exc:
            raise JobRejected(f"{host.name}: {exc}") from None
        except PowerShellUnavailable as exc:
            self.down[host.conn_id] = _first_line(exc)
            raise JobDeferred(f"{host.name}: {_first_line(exc)}") from None
        except AirflowException as exc:   # the connection is missing or misconfigured: fixable, so retried
            self.down[host.conn_id] = _first_line(exc)
            raise JobDeferred(f"{host.name}: connection {host.conn_id}: {_first_line(exc)}") from None

    def target(self, p: dict) -> tuple[Host, dict, tuple | None]:
        """The host, the script's VM parameters (Id, else Name) and the panel's row of the VM, if any."""
        row = None
        params: dict[str, Any] = {}
        if p.get("vm_id") is not None:
            try:
                guid = uuid.UUID(str(p["vm_id"]))
            except ValueError:
                raise JobRejected(f"vm_id {p['vm_id']!r} is not a GUID") from None
            params["Id"] = str(guid)
            row = self.conn.execute(_VM_BY_GUID, (guid,)).fetchone()
        else:
            params["Name"] = _text(p, "name", limit=100)
        host_name = _text(p, "host", required=row is None)
        if host_name is not None:
            host = self._host(host_name)
        else:
            found = _hosts(self.conn, [row[3]])
            if not found:
                raise JobRejected(f"the host of VM {params['Id']} is disabled")
            host = found[0]
        if row is None and "Name" in params:
            named = self.conn.execute(_VM_BY_NAME, (host.id, params["Name"])).fetchall()
            row = named[0] if len(named) == 1 else None
        return host, params, row

    def _record_state(self, vm: ActionVM) -> None:
        self.conn.execute(_PANEL_STATE, {"guid": vm.Id, "name": vm.Name, "state": vm.State, "generation": vm.Generation,
                                         "cpus": vm.ProcessorCount, "memory": vm.MemoryStartup, "at": self.at})

    def _record_disk(self, vm_guid, disk: DiskRecord) -> None:
        self.conn.execute(_PANEL_DISK, {**_disk_row(vm_guid, disk), "vm_guid": vm_guid, "at": self.at})

    @staticmethod
    def _vm_result(host: Host, vm: ActionVM, **extra) -> dict:
        return {"host": host.name, "vm_id": str(vm.Id), "name": vm.Name, "state": vm.State, **extra}

    # -- the actions
    def handle(self, action: str, payload: dict) -> dict:
        return getattr(self, action)(payload)

    def create_vm(self, p: dict) -> dict:
        host = self._host(_text(p, "host"))
        name = _text(p, "name", limit=100)
        memory_mb = _int(p, "memory_mb", 32, 12 * 1024 * 1024)
        disk_gb = _int(p, "disk_gb", 1, 64 * 1024)
        if memory_mb is None or disk_gb is None:
            raise JobRejected("payload needs memory_mb and disk_gb")
        generation = _int(p, "generation", 1, 2, default=2)
        cpus = _int(p, "processor_count", 1, 240, default=1)
        customer = _int(p, "customer_id", 1, 2**63 - 1)
        subscription = _int(p, "subscription_id", 1, 2**63 - 1)
        if customer is not None and not self.conn.execute("SELECT 1 FROM customers WHERE id = %s",
                                                          (customer,)).fetchone():
            raise JobRejected(f"no customer {customer}")
        if subscription is not None and not self.conn.execute("SELECT 1 FROM subscriptions WHERE id = %s",
                                                              (subscription,)).fetchone():
            raise JobRejected(f"no subscription {subscription}")
        rows = self.run(host, "hyperv/create_vm", {
            "Name": name, "Generation": generation, "MemoryStartupBytes": _i64(memory_mb * MIB),
            "ProcessorCount": cpus, "VhdPath": _vhd_path(p, "vhd_path", required=False),
            "VhdSizeBytes": _i64(disk_gb * GIB), "SwitchName": _text(p, "switch_name", required=False)})
        vm = _parse(CreatedVM, rows, host, "create_vm")
        with self.conn.transaction():
            self.conn.execute(_PANEL_CREATED, {"guid": vm.Id, "host": host.id, "name": vm.Name, "state": vm.State,
                                               "generation": vm.Generation, "cpus": vm.ProcessorCount,
                                               "memory": vm.MemoryStartup, "customer": customer,
                                               "subscription": subscription, "at": self.at})
            for disk in vm.Disks:
                self._record_disk(vm.Id, disk)
        return self._vm_result(host, vm, created=vm.Created, vhd_paths=[d.Path for d in vm.Disks])

    def _simple(self, p: dict, script: str, extra: dict | None = None) -> tuple:
        host, params, _ = self.target(p)
        rows = self.run(host, script, {**params, **(extra or {})})
        vm = _parse(ActionVM, rows, host, script.split("/")[-1])
        self._record_state(vm)
        return host, vm, rows[0]

    def start_vm(self, p: dict) -> dict:
        host, vm, raw = self._simple(p, "hyperv/start_vm")
        return self._vm_result(host, vm, previous_state=raw.get("PreviousState"), changed=bool(raw.get("Changed")))

    def stop_vm(self, p: dict) -> dict:
        host, vm, raw = self._simple(p, "hyperv/stop_vm", {"TurnOff": True if p.get("turn_off") else None})
        return self._vm_result(host, vm, previous_state=raw.get("PreviousState"), changed=bool(raw.get("Changed")))

    def restart_vm(self, p: dict) -> dict:
        host, vm, raw = self._simple(p, "hyperv/restart_vm", {"Hard": True if p.get("hard") else None})
        return self._vm_result(host, vm, previous_state=raw.get("PreviousState"))

    def resize_vm(self, p: dict) -> dict:
        cpus = _int(p, "processor_count", 1, 240)
        memory_mb = _int(p, "memory_mb", 32, 12 * 1024 * 1024)
        if cpus is None and memory_mb is None:
            raise JobRejected("payload needs processor_count or memory_mb")
        host, vm, raw = self._simple(p, "hyperv/resize_vm", {
            "ProcessorCount": cpus, "MemoryStartupBytes": _i64(None if memory_mb is None else memory_mb * MIB)})
        return self._vm_result(host, vm, processor_count=vm.ProcessorCount, memory_mb=(vm.MemoryStartup or 0) // MIB,
                               changed=list(raw.get("Changed") or []))

    def add_disk(self, p: dict) -> dict:
        size_gb = _int(p, "size_gb", 1, 64 * 1024)
        if size_gb is None:
            raise JobRejected("payload has no 'size_gb'")
        vhd_type = p.get("vhd_type", "Dynamic")
        if vhd_type not in ("Dynamic", "Fixed"):
            raise JobRejected("vhd_type must be Dynamic or Fixed")
        host, params, _ = self.target(p)
        path = _vhd_path(p, "path", required=False)
        if path is None:
            file_name = _text(p, "file_name", limit=200)
            if not re.fullmatch(r"[^\\/:*?\"<>|]+\.vhdx?", file_name, re.IGNORECASE) or file_name.startswith("."):
                raise JobRejected(f"file_name {file_name!r} is not a .vhdx/.vhd file name")
            folder = self.conn.execute("SELECT vhd_path FROM hyperv_hypervisors WHERE host_id = %s",
                                       (host.id,)).fetchone()
            if not folder or not folder[0]:
                raise JobRejected(f"the VHD folder of {host.name} is not known yet (no hypervisor inventory)")
            path = ntpath.join(folder[0], file_name)
        rows = self.run(host, "hyperv/add_disk", {**params, "Path": path, "SizeBytes": _i64(size_gb * GIB),
                                                  "VhdType": vhd_type})
        result = _parse(DiskActionResult, rows, host, "add_disk")
        self._record_disk(result.Id, result.Disk)
        return self._vm_result(host, result, path=result.Disk.Path, size_gb=(result.Disk.Size or 0) // GIB,
                               created=result.Created, attached=result.Attached)

    def expand_disk(self, p: dict) -> dict:
        size_gb = _int(p, "size_gb", 1, 64 * 1024)
        if size_gb is None:
            raise JobRejected("payload has no 'size_gb'")
        path = _vhd_path(p, "path")
        host, params, _ = self.target(p)
        rows = self.run(host, "hyperv/expand_disk", {**params, "Path": path, "SizeBytes": _i64(size_gb * GIB)})
        result = _parse(DiskActionResult, rows, host, "expand_disk")
        self._record_disk(result.Id, result.Disk)
        return self._vm_result(host, result, path=path, size_gb=(result.Disk.Size or 0) // GIB,
                               resized=result.Resized)

    def checkpoint_vm(self, p: dict) -> dict:
        name = _text(p, "checkpoint_name", limit=100)
        host, params, _ = self.target(p)
        rows = self.run(host, "hyperv/checkpoint_vm", {**params, "CheckpointName": name})
        result = _parse(CheckpointResult, rows, host, "checkpoint_vm")
        return self._vm_result(host, result, checkpoint_id=str(result.CheckpointId),
                               checkpoint_name=result.CheckpointName, created=result.Created)

    def delete_vm(self, p: dict) -> dict:
        host, params, row = self.target(p)
        known = []
        if row is not None:   # the panel knows the VM: by its GUID, so a retry after Remove-VM still archives its disks
            params = {"Id": str(row[1])}
            known = [r[0] for r in self.conn.execute("SELECT path FROM hyperv_vm_disks WHERE vm_id = %s ORDER BY path",
                                                     (row[0],))]
        rows = self.run(host, "hyperv/delete_vm", {**params, "ArchivePath": host.archive_path,
                                                   "KnownDiskPaths": known or None})
        result = _parse(DeletedVM, rows, host, "delete_vm")
        guid = None
        if result.Id:
            try:
                guid = uuid.UUID(result.Id)
            except ValueError:
                raise JobRejected(f"{host.name}: delete_vm returned a malformed VM id {result.Id!r}") from None
        archived = [{"path": a.Path, "archive_path": a.ArchivePath, "file_size_bytes": a.FileSize}
                    for a in result.Archived]
        name = result.Name or (row[2] if row is not None else None)
        if guid is not None:
            self.conn.execute(_PANEL_DELETED, {"guid": guid, "host": host.id, "name": name, "at": self.at,
                                               "rows": json.dumps(archived)})
        outcome = {"host": host.name, "vm_id": str(guid) if guid else None, "name": name,
                   "deleted": result.Found, "archived": [a.ArchivePath for a in result.Archived]}
        if not result.Found:
            outcome["already_absent"] = True
        return outcome


def process_vps_group_actions(panel_db, interval, params=None, log=None) -> dict:
    """Process VPS group actions."""
    with panel_db.get_conn() as conn:
        conn.autocommit = True
        jobs = _VpsJobs(conn, interval.end, log)
        try:
            return process_group_actions(panel_db, BACKEND, jobs.handle, interval, params, log, actions=ACTIONS)
        finally:
            jobs.close()


# -- GroupActionWorkVPS 2. storage type of disks ----------------------------------------------

_DISK_PATHS = """
SELECT v.host_id, d.path FROM hyperv_vm_disks d
JOIN hyperv_vms v ON v.id = d.vm_id AND v.deleted_at IS NULL
JOIN hyperv_hosts h ON h.id = v.host_id AND h.enabled
GROUP BY v.host_id, d.path
ORDER BY v.host_id, min(d.storage_checked_at) NULLS FIRST, d.path
"""

_SET_STORAGE = """
UPDATE hyperv_vm_disks d
SET storage_type = x.storage_type, storage_pool = x.storage_pool, storage_checked_at = %(at)s
FROM jsonb_to_recordset(%(rows)s::jsonb) AS x(path text, storage_type text, storage_pool text),
     hyperv_vms v, hyperv_vm_disks old
WHERE v.id = d.vm_id AND v.host_id = %(host)s AND v.deleted_at IS NULL AND d.path = x.path AND old.id = d.id
  AND (d.storage_checked_at IS NULL OR d.storage_checked_at <= %(at)s)
RETURNING old.storage_type IS DISTINCT FROM x.storage_type
"""


def storage_type(record: StorageRecord) -> str:
    """The one kind of media a file lives on: SSD, HDD, NVMe, SCM; Mixed (a tiered pool); Network; Unspecified."""
    if record.Path.startswith("\\\\"):
        return "Network"
    kinds = set()
    for i, media in enumerate(record.MediaTypes):
        bus = record.BusTypes[i] if i < len(record.BusTypes) else None
        kinds.add("NVMe" if bus == "NVMe" and media in ("SSD", "Unspecified") else
                  media if media in ("SSD", "HDD", "SCM") else "Unspecified")
    if not kinds:
        return "Unspecified"
    return kinds.pop() if len(kinds) == 1 else "Mixed"


def update_disk_storage_types(panel_db, interval, params=None, log=None) -> dict:
    """Update storage type of disks."""
    params = params or {}
    limit = int(params.get("storage_paths_per_host", STORAGE_PATHS_PER_HOST))
    report = _report("paths_checked", "disks_updated", "disks_retyped")
    at = interval.end
    with panel_db.get_conn() as conn:
        conn.autocommit = True
        paths: dict[int, list[str]] = {}
        for host_id, path in conn.execute(_DISK_PATHS):
            if len(paths.setdefault(host_id, [])) < limit:
                paths[host_id].append(path)

        def work(hook, host: Host) -> None:
            rows = hook.run_script("hyperv/get_disk_storage", {"Paths": paths[host.id]})
            records = parse_records(StorageRecord, rows, report, f"host {host.name} disk")
            wanted = set(paths[host.id])
            update = [{"path": r.Path, "storage_type": storage_type(r), "storage_pool": r.StoragePool}
                      for r in records if r.Path in wanted]
            report.add("paths_checked", len(update))
            retyped = conn.execute(_SET_STORAGE, {"host": host.id, "at": at, "rows": json.dumps(update)}).fetchall()
            report.add("disks_updated", len(retyped))
            report.add("disks_retyped", sum(1 for (changed,) in retyped if changed))

        return _for_each_host(conn, _hosts(conn, sorted(paths)), "disk_storage_types", at, report, log, work)


# -- GroupActionWorkVPS 3. archived VHD files -------------------------------------------------

_DUE_ARCHIVES = """
SELECT a.id, a.host_id, a.archive_path FROM hyperv_archived_vhds a
JOIN hyperv_hosts h ON h.id = a.host_id AND h.enabled
WHERE a.status = 'archived' AND a.archived_at < %(cutoff)s
ORDER BY a.archived_at, a.id
LIMIT %(limit)s
"""

_ARCHIVE_OUTCOMES = """
UPDATE hyperv_archived_vhds a
SET status = x.status, deleted_at = CASE WHEN x.status = 'deleted' THEN %(at)s::timestamptz END, last_error = x.error
FROM jsonb_to_recordset(%(rows)s::jsonb) AS x(id bigint, status text, error text)
WHERE a.id = x.id AND a.status = 'archived'
"""


def archive_refusal(path: str, root: str) -> str | None:
    """Why ``path`` must not be deleted as an archived disk of ``root`` (None: it may)."""
    if not _WINDOWS_PATH.match(root) or any(seg in (".", "..") for seg in root.split("\\")):
        return f"the archive folder {root!r} is not an absolute local folder"
    if not _WINDOWS_PATH.match(path) or any(seg in (".", "..") for seg in path.split("\\")):
        return "not an absolute local path"
    if not path.lower().startswith(root.rstrip("\\").lower() + "\\"):
        return f"outside the archive folder {root}"
    if not path.lower().endswith(VHD_EXTENSIONS):
        return "not a virtual disk file"
    return None


def delete_archived_vhd_files(panel_db, interval, params=None, log=None) -> dict:
    """Delete archived VHD files from server."""
    params = params or {}
    days = int(params.get("vhd_archive_days", VHD_ARCHIVE_DAYS))
    batch = int(params.get("vhd_delete_batch", VHD_DELETE_BATCH))
    if days < 0 or batch < 1:
        raise ValueError("vhd_archive_days must be >= 0 and vhd_delete_batch >= 1")
    report = _report("files_due", "files_deleted", "files_missing", "files_refused", "files_failed")
    at = interval.end
    with panel_db.get_conn() as conn:
        conn.autocommit = True
        due: dict[int, list[tuple[int, str]]] = {}
        for archive_id, host_id, path in conn.execute(_DUE_ARCHIVES, {"cutoff": at - timedelta(days=days),
                                                                      "limit": batch}):
            due.setdefault(host_id, []).append((archive_id, path))
            report.add("files_due")

        def work(hook, host: Host) -> None:
            outcomes, send = [], {}
            for archive_id, path in due[host.id]:
                reason = archive_refusal(path, host.archive_path)
                if reason is None:
                    send[path] = archive_id
                    continue
                outcomes.append({"id": archive_id, "status": "refused", "error": f"refused: {reason}"})
                report.add("files_refused")
                report.skip(f"refused: {reason}", f"host {host.name} archived disk {path}")
            results = []
            if send:
                rows = hook.run_script("hyperv/remove_archived_vhds", {"ArchiveRoot": host.archive_path,
                                                                       "Paths": list(send)})
                results = parse_records(RemovalRecord, rows, report, f"host {host.name} archived disk")
            for r in results:
                archive_id = send.pop(r.Path, None)
                if archive_id is None:
                    continue
                if r.Deleted or r.Missing:
                    outcomes.append({"id": archive_id, "status": "deleted", "error": None})
                    report.add("files_missing" if r.Missing else "files_deleted")
                elif (r.Error or "").startswith("refused"):
                    outcomes.append({"id": archive_id, "status": "refused", "error": r.Error})
                    report.add("files_refused")
                    report.skip("refused by the host", f"host {host.name} archived disk {r.Path}")
                else:   # locked, access denied …: kept, tried again next run
                    outcomes.append({"id": archive_id, "status": "archived",
                                     "error": (r.Error or "not deleted")[:1000]})
                    report.add("files_failed")
                    report.skip(f"not deleted: {(r.Error or '')[:200]}", f"host {host.name} archived disk {r.Path}")
            conn.execute(_ARCHIVE_OUTCOMES, {"at": at, "rows": json.dumps(outcomes)})

        return _for_each_host(conn, _hosts(conn, sorted(due)), "archived_vhd_files", at, report, log, work)


# -- ProvisioningWork: VPS threshold alerts ---------------------------------------------------

_VPS_STATE = """
CREATE TEMP TABLE vps_state ON COMMIT DROP AS
WITH limits AS (
    SELECT v.id AS vm_id,
           CASE WHEN coalesce(o.enabled, true) THEN coalesce(o.cpu_percent,
                                                              CASE WHEN d.enabled THEN d.cpu_percent END)
           END AS cpu,
           CASE WHEN coalesce(o.enabled, true) THEN coalesce(o.memory_percent,
                                                              CASE WHEN d.enabled THEN d.memory_percent END)
           END AS memory,
           CASE WHEN coalesce(o.enabled, true) THEN coalesce(o.disk_percent,
                                                              CASE WHEN d.enabled THEN d.disk_percent END)
           END AS disk
    FROM hyperv_vms v
    JOIN hyperv_hosts h ON h.id = v.host_id AND h.enabled
    LEFT JOIN vps_thresholds o ON o.vm_id = v.id
    LEFT JOIN vps_thresholds d ON d.vm_id IS NULL
    WHERE v.deleted_at IS NULL
), cpu AS (           -- the average over the window: one busy sample is not a crossing
    SELECT s.vm_id, avg(s.cpu_percent) AS value FROM hyperv_vm_stats s
    WHERE s.sampled_at > %(since)s AND s.sampled_at <= %(at)s AND s.cpu_percent IS NOT NULL
    GROUP BY s.vm_id
), memory AS (        -- the latest sample in the window: demand against what the VM is given
    SELECT DISTINCT ON (s.vm_id) s.vm_id, s.memory_demand_mb * 100.0 / s.memory_assigned_mb AS value
    FROM hyperv_vm_stats s
    WHERE s.sampled_at > %(since)s AND s.sampled_at <= %(at)s AND s.memory_assigned_mb > 0
      AND s.memory_demand_mb IS NOT NULL
    ORDER BY s.vm_id, s.sampled_at DESC
), disk AS (          -- the fullest growing disk (a fixed disk's file is always its full size)
    SELECT DISTINCT ON (d.vm_id) d.vm_id, d.file_size_bytes * 100.0 / d.size_bytes AS value, d.path
    FROM hyperv_vm_disks d
    WHERE d.vhd_type IN ('Dynamic', 'Differencing') AND d.size_bytes > 0 AND d.file_size_bytes IS NOT NULL
    ORDER BY d.vm_id, d.file_size_bytes::numeric / d.size_bytes DESC, d.path
)
SELECT l.vm_id, m.metric, round(least(m.value, 9999), 2) AS value, m.threshold, m.detail,
       m.value >= m.threshold AS over
FROM limits l
LEFT JOIN cpu ON cpu.vm_id = l.vm_id
LEFT JOIN memory ON memory.vm_id = l.vm_id
LEFT JOIN disk ON disk.vm_id = l.vm_id
CROSS JOIN LATERAL (VALUES ('cpu', cpu.value, l.cpu, NULL::text), ('memory', memory.value, l.memory, NULL),
                           ('disk', disk.value, l.disk, disk.path)) AS m(metric, value, threshold, detail)
WHERE m.value IS NOT NULL AND m.threshold IS NOT NULL
"""

# A later run's clock is never overruled: an alert it saw is left as it left it.
_VPS_CLEAR = """
UPDATE vps_threshold_alerts a SET cleared_at = %(at)s
WHERE a.cleared_at IS NULL AND a.opened_at < %(at)s AND a.last_seen_at <= %(at)s
  AND NOT EXISTS (SELECT 1 FROM vps_state s WHERE s.vm_id = a.vm_id AND s.metric = a.metric AND s.over)
RETURNING a.id
"""

_VPS_STILL_OVER = """
UPDATE vps_threshold_alerts a SET last_seen_at = %(at)s
FROM vps_state s
WHERE a.cleared_at IS NULL AND a.last_seen_at < %(at)s AND s.over AND s.vm_id = a.vm_id AND s.metric = a.metric
RETURNING a.id
"""

_VPS_OPEN = """
WITH opened AS (
    INSERT INTO vps_threshold_alerts (vm_id, metric, threshold_percent, value_percent, detail, opened_at, last_seen_at)
    SELECT s.vm_id, s.metric, s.threshold, s.value, s.detail, %(at)s, %(at)s
    FROM vps_state s
    WHERE s.over AND NOT EXISTS (
        SELECT 1 FROM vps_threshold_alerts a WHERE a.vm_id = s.vm_id AND a.metric = s.metric
          AND (a.cleared_at IS NULL OR a.cleared_at >= %(at)s OR a.opened_at >= %(at)s))
    ORDER BY s.vm_id, s.metric
    ON CONFLICT DO NOTHING
    RETURNING *)
SELECT o.id, o.metric, o.threshold_percent, o.value_percent, o.detail, v.name, cu.id, cu.name, btrim(cu.email),
       coalesce(btrim(cu.email) ~ %(email_re)s, false), pr.name
FROM opened o
JOIN hyperv_vms v ON v.id = o.vm_id
LEFT JOIN subscriptions sub ON sub.id = v.subscription_id
LEFT JOIN customers cu ON cu.id = coalesce(v.customer_id, sub.customer_id)
LEFT JOIN providers pr ON pr.id = cu.provider_id
ORDER BY o.id
"""


def generate_vps_threshold_alerts(panel_db, interval, params=None, log=None) -> dict:
    """Generate O365/CSP and VPS threshold alerts — the VPS part: each VPS's CPU (average over
    ``vps_cpu_window_minutes``), memory (demand against assigned) and fullest growing disk against its
    own or the default thresholds; one alert (and one e-mail to its customer) per crossing."""
    params = params or {}
    window = timedelta(minutes=int(params.get("vps_cpu_window_minutes", CPU_WINDOW_MINUTES)))
    report = StepReport()
    for key in ("measured", "over", "alerts_opened", "alerts_still_open", "alerts_cleared", "emails_queued",
                "alerts_without_customer"):
        report.add(key, 0)
    at = interval.end
    with panel_db.get_conn() as conn:
        conn.autocommit = True
        with conn.transaction():   # alerts and their e-mails together, or neither
            conn.execute(_VPS_STATE, {"at": at, "since": at - window})
            measured, over = conn.execute("SELECT count(*), count(*) FILTER (WHERE over) FROM vps_state").fetchone()
            cleared = conn.execute(_VPS_CLEAR, {"at": at}).fetchall()
            still = conn.execute(_VPS_STILL_OVER, {"at": at}).fetchall()
            opened = conn.execute(_VPS_OPEN, {"at": at, "email_re": EMAIL_RE}).fetchall()
            for (alert_id, metric, threshold, value, detail, vm_name, customer_id, customer_name, email, mailable,
                 provider) in opened:
                if customer_id is None:
                    report.add("alerts_without_customer")
                    continue
                if not mailable:
                    report.skip("customer has no usable e-mail address",
                                f"customer {customer_id} ({email or 'no address'}), VPS {vm_name}")
                    continue
                key = f"vps-threshold-alert:{alert_id}"
                report.add("emails_queued", enqueue(
                    conn, dedupe_key=key, to=email, template=ALERT_TEMPLATE, not_before=at, context={
                        "customer_name": customer_name, "vm_name": vm_name, "metric": metric,
                        "metric_label": METRIC_LABELS[metric], "value": value, "threshold": threshold,
                        "window_minutes": int(window.total_seconds() // 60),
                        "disk": ntpath.basename(detail) if detail else None, "provider": provider}))
                conn.execute("UPDATE vps_threshold_alerts SET outbox_key = %s WHERE id = %s", (key, alert_id))
    report.add("measured", measured)
    report.add("over", over)
    report.add("alerts_opened", len(opened))
    report.add("alerts_still_open", len(still))
    report.add("alerts_cleared", len(cleared))
    summary = report.as_dict()
    if log is not None and summary["skipped"]:
        log.warning("VPS threshold alerts: %s", summary["skipped"])
    return summary
