"""GroupActionWorkVPS 1: the VPS group actions (create, start, stop … a VM) on the Hyper-V hosts.

:func:`process_vps_group_actions` — the ``vps`` queue of ``group_action_jobs`` through
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

Payloads are read by :class:`panelflow.services.group_actions.Payload` (one strict rule:
text is a JSON string, numbers are JSON integers); a VHD path must moreover be an absolute
local .vhdx/.vhd path. One PowerShell session per host serves the whole run.
"""

from __future__ import annotations

import json
import ntpath
import re
import uuid
from datetime import datetime
from typing import Any

from panelflow.services.group_actions import JobRejected, Payload, PowerShellSessions, process_group_actions
from panelflow.services.server_samples import MIB
from panelflow.steps.hyperv._backend import (DISK_DATA, GIB, ActionVM, CheckpointResult, CreatedVM, DeletedVM,
                                             DiskActionResult, DiskRecord, Host, columns, disk_row, host_named,
                                             hosts, unsafe_path)

BACKEND = "vps"
ACTIONS = ("create_vm", "start_vm", "stop_vm", "restart_vm", "resize_vm", "add_disk", "expand_disk", "checkpoint_vm",
           "delete_vm")
MEMORY_MB = (32, 12 * 1024 * 1024)
DISK_GB = (1, 64 * 1024)
PROCESSORS = (1, 240)
ROW_ID = (1, 2**63 - 1)

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
INSERT INTO hyperv_vm_disks AS d (vm_id, path, {columns(DISK_DATA)}, first_seen_at, synced_at)
SELECT v.id, %(path)s, {", ".join(f"%({c})s" for c in DISK_DATA)}, %(at)s, %(at)s
FROM hyperv_vms v WHERE v.vm_guid = %(vm_guid)s
ON CONFLICT (vm_id, path) DO UPDATE
SET {", ".join(f"{c} = coalesce(EXCLUDED.{c}, d.{c})" for c in DISK_DATA)}
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

def vhd_path(p: Payload, key: str, required: bool = True) -> str | None:
    """A disk the job names by path: an absolute local .vhdx/.vhd path, never one climbing out with ``..``."""
    path = p.text(key, required, limit=260)
    if path is None:
        return None
    if unsafe_path(path) or not path.lower().endswith((".vhd", ".vhdx")):
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
        self.sessions = PowerShellSessions(log)

    def close(self) -> None:
        self.sessions.close()

    # -- reaching the host
    def _host(self, name: str) -> Host:
        found = host_named(self.conn, name)
        if found is None:
            raise JobRejected(f"no Hyper-V host {name!r}")
        if not found[1]:
            raise JobRejected(f"Hyper-V host {found[0].name} is disabled")
        return found[0]

    def run(self, host: Host, script: str, parameters: dict) -> list:
        return self.sessions.run(host.name, host.conn_id, script, parameters)

    def target(self, p: Payload) -> tuple[Host, dict, tuple | None]:
        """The host, the script's VM parameters (Id, else Name) and the panel's row of the VM, if any."""
        row = None
        params: dict[str, Any] = {}
        vm_id = p.get("vm_id")
        if vm_id is not None:
            try:
                guid = uuid.UUID(str(vm_id))
            except ValueError:
                raise JobRejected(f"vm_id {vm_id!r} is not a GUID") from None
            params["Id"] = str(guid)
            row = self.conn.execute(_VM_BY_GUID, (guid,)).fetchone()
        else:
            params["Name"] = p.text("name", limit=100)
        host_name = p.text("host", required=row is None)
        if host_name is not None:
            host = self._host(host_name)
        else:
            found = hosts(self.conn, [row[3]])
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
        self.conn.execute(_PANEL_DISK, {**disk_row(vm_guid, disk), "vm_guid": vm_guid, "at": self.at})

    @staticmethod
    def _vm_result(host: Host, vm: ActionVM, **extra) -> dict:
        return {"host": host.name, "vm_id": str(vm.Id), "name": vm.Name, "state": vm.State, **extra}

    # -- the actions
    def handle(self, action: str, payload: dict) -> dict:
        return getattr(self, action)(Payload(payload))

    def create_vm(self, p: Payload) -> dict:
        host = self._host(p.text("host"))
        name = p.text("name", limit=100)
        memory_mb = p.integer("memory_mb", *MEMORY_MB)
        disk_gb = p.integer("disk_gb", *DISK_GB)
        if memory_mb is None or disk_gb is None:
            raise JobRejected("payload needs memory_mb and disk_gb")
        generation = p.integer("generation", 1, 2, default=2)
        cpus = p.integer("processor_count", *PROCESSORS, default=1)
        customer = p.integer("customer_id", *ROW_ID)
        subscription = p.integer("subscription_id", *ROW_ID)
        if customer is not None and not self.conn.execute("SELECT 1 FROM customers WHERE id = %s",
                                                          (customer,)).fetchone():
            raise JobRejected(f"no customer {customer}")
        if subscription is not None and not self.conn.execute("SELECT 1 FROM subscriptions WHERE id = %s",
                                                              (subscription,)).fetchone():
            raise JobRejected(f"no subscription {subscription}")
        rows = self.run(host, "hyperv/create_vm", {
            "Name": name, "Generation": generation, "MemoryStartupBytes": _i64(memory_mb * MIB),
            "ProcessorCount": cpus, "VhdPath": vhd_path(p, "vhd_path", required=False),
            "VhdSizeBytes": _i64(disk_gb * GIB), "SwitchName": p.text("switch_name", required=False)})
        vm = _parse(CreatedVM, rows, host, "create_vm")
        with self.conn.transaction():
            self.conn.execute(_PANEL_CREATED, {"guid": vm.Id, "host": host.id, "name": vm.Name, "state": vm.State,
                                               "generation": vm.Generation, "cpus": vm.ProcessorCount,
                                               "memory": vm.MemoryStartup, "customer": customer,
                                               "subscription": subscription, "at": self.at})
            for disk in vm.Disks:
                self._record_disk(vm.Id, disk)
        return self._vm_result(host, vm, created=vm.Created, vhd_paths=[d.Path for d in vm.Disks])

    def _simple(self, p: Payload, script: str, extra: dict | None = None) -> tuple:
        host, params, _ = self.target(p)
        rows = self.run(host, script, {**params, **(extra or {})})
        vm = _parse(ActionVM, rows, host, script.split("/")[-1])
        self._record_state(vm)
        return host, vm, rows[0]

    def start_vm(self, p: Payload) -> dict:
        host, vm, raw = self._simple(p, "hyperv/start_vm")
        return self._vm_result(host, vm, previous_state=raw.get("PreviousState"), changed=bool(raw.get("Changed")))

    def stop_vm(self, p: Payload) -> dict:
        host, vm, raw = self._simple(p, "hyperv/stop_vm", {"TurnOff": True if p.get("turn_off") else None})
        return self._vm_result(host, vm, previous_state=raw.get("PreviousState"), changed=bool(raw.get("Changed")))

    def restart_vm(self, p: Payload) -> dict:
        host, vm, raw = self._simple(p, "hyperv/restart_vm", {"Hard": True if p.get("hard") else None})
        return self._vm_result(host, vm, previous_state=raw.get("PreviousState"))

    def resize_vm(self, p: Payload) -> dict:
        cpus = p.integer("processor_count", *PROCESSORS)
        memory_mb = p.integer("memory_mb", *MEMORY_MB)
        if cpus is None and memory_mb is None:
            raise JobRejected("payload needs processor_count or memory_mb")
        host, vm, raw = self._simple(p, "hyperv/resize_vm", {
            "ProcessorCount": cpus, "MemoryStartupBytes": _i64(None if memory_mb is None else memory_mb * MIB)})
        return self._vm_result(host, vm, processor_count=vm.ProcessorCount, memory_mb=(vm.MemoryStartup or 0) // MIB,
                               changed=list(raw.get("Changed") or []))

    def add_disk(self, p: Payload) -> dict:
        size_gb = p.integer("size_gb", *DISK_GB, required=True)
        vhd_type = p.get("vhd_type", "Dynamic")
        if vhd_type not in ("Dynamic", "Fixed"):
            raise JobRejected("vhd_type must be Dynamic or Fixed")
        host, params, _ = self.target(p)
        path = vhd_path(p, "path", required=False)
        if path is None:
            file_name = p.text("file_name", limit=200)
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

    def expand_disk(self, p: Payload) -> dict:
        size_gb = p.integer("size_gb", *DISK_GB, required=True)
        path = vhd_path(p, "path")
        host, params, _ = self.target(p)
        rows = self.run(host, "hyperv/expand_disk", {**params, "Path": path, "SizeBytes": _i64(size_gb * GIB)})
        result = _parse(DiskActionResult, rows, host, "expand_disk")
        self._record_disk(result.Id, result.Disk)
        return self._vm_result(host, result, path=path, size_gb=(result.Disk.Size or 0) // GIB,
                               resized=result.Resized)

    def checkpoint_vm(self, p: Payload) -> dict:
        name = p.text("checkpoint_name", limit=100)
        host, params, _ = self.target(p)
        rows = self.run(host, "hyperv/checkpoint_vm", {**params, "CheckpointName": name})
        result = _parse(CheckpointResult, rows, host, "checkpoint_vm")
        return self._vm_result(host, result, checkpoint_id=str(result.CheckpointId),
                               checkpoint_name=result.CheckpointName, created=result.Created)

    def delete_vm(self, p: Payload) -> dict:
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
