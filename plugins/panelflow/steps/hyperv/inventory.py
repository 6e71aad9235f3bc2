"""HyperVHomeBackendThread 1 and 2: what each Hyper-V host is, and which VMs it holds.

1. :func:`sync_bare_metal_inventory` — Win32_ComputerSystem/BIOS/Processor/OperatingSystem and the
   physical network adapters → ``hyperv_host_hardware``, ``hyperv_host_nics``.
2. :func:`sync_hypervisor_inventory` — Get-VMHost → ``hyperv_hypervisors``; Get-VM with its disks
   (Get-VMHardDiskDrive | Get-VHD) and network adapters → ``hyperv_vms`` (keyed by the VM's GUID,
   which survives live migration), ``hyperv_vm_disks``, ``hyperv_vm_network_adapters``. A VM no
   longer on its host is marked ``deleted_at`` (never dropped), unless one of the host's records was
   malformed in this run (it may be that VM).

A row is only overwritten by a sync at least as new as it (a late rerun of an earlier run leaves a
newer row alone), and ``changed_at`` moves only when what the row describes changed.
"""

from __future__ import annotations

import json

from panelflow.hooks.powershell import parse_records
from panelflow.steps.hyperv._backend import (DISK_DATA, DISK_TYPES, HardwareRecord, Host, HostRecord, NicRecord,
                                             VMRecord, columns, disk_row, for_each_host, host_report, hosts, one)


def _upsert_host_row(table: str, data, returning: str = "") -> str:
    """One row per host, overwritten only by a sync at least as new; ``changed_at`` moves only when
    one of ``data`` changed."""
    return f"""
INSERT INTO {table} AS h (host_id, {columns(data)}, synced_at, changed_at)
VALUES (%(host)s, {", ".join(f"%({c})s" for c in data)}, %(at)s, %(at)s)
ON CONFLICT (host_id) DO UPDATE
SET {", ".join(f"{c} = EXCLUDED.{c}" for c in data)},
    synced_at = EXCLUDED.synced_at,
    changed_at = CASE WHEN ({columns("h." + c for c in data)}) IS DISTINCT FROM
                           ({columns("EXCLUDED." + c for c in data)})
                      THEN EXCLUDED.changed_at ELSE h.changed_at END
WHERE h.synced_at <= EXCLUDED.synced_at
{returning}"""


# -- 1. bare-metal inventory ------------------------------------------------------------------

_HW_DATA = ("manufacturer", "model", "serial_number", "bios_manufacturer", "bios_version", "bios_release_date",
            "cpu_model", "cpu_sockets", "cpu_cores", "cpu_logical_processors", "memory_bytes", "os_name", "os_version")
_UPSERT_HARDWARE = _upsert_host_row("hyperv_host_hardware", _HW_DATA,
                                    "RETURNING (h.xmax = 0) AS inserted, h.changed_at = %(at)s AS changed\n")

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
    report = host_report("hardware_added", "hardware_changed", "nics_seen", "nics_removed")
    at = interval.end

    with panel_db.get_conn() as conn:
        conn.autocommit = True

        def work(hook, host: Host) -> None:
            rows = hook.run_script("windows/get_hardware_inventory")
            hw = one(HardwareRecord, rows, report, f"host {host.name} hardware")
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

        return for_each_host(conn, hosts(conn), "bare_metal_inventory", at, report, log, work)


# -- 2. hypervisor inventory ------------------------------------------------------------------

_HV_DATA = ("computer_name", "os_name", "os_version", "default_vm_version", "logical_processors",
            "memory_capacity_bytes", "vm_path", "vhd_path", "numa_spanning")
_UPSERT_HYPERVISOR = _upsert_host_row("hyperv_hypervisors", _HV_DATA)

_VM_TYPES = {"vm_guid": "uuid", "name": "text", "state": "text", "generation": "smallint", "processor_count": "integer",
             "memory_startup_bytes": "bigint", "memory_assigned_bytes": "bigint", "memory_demand_bytes": "bigint",
             "dynamic_memory": "boolean", "uptime_seconds": "bigint", "version": "text", "config_path": "text"}
_VM_DATA = [c for c in _VM_TYPES if c != "vm_guid"]
# what counts as a change of the VM (not its running figures: memory assigned, demand, uptime)
_VM_CONFIG = ("host_id", "name", "state", "generation", "processor_count", "memory_startup_bytes", "dynamic_memory",
              "version", "config_path")
_UPSERT_VMS = f"""
INSERT INTO hyperv_vms AS v (vm_guid, host_id, {columns(_VM_DATA)}, first_seen_at, synced_at, changed_at)
SELECT x.vm_guid, %(host)s, {columns("x." + c for c in _VM_DATA)}, %(at)s, %(at)s, %(at)s
FROM jsonb_to_recordset(%(rows)s::jsonb) AS x({", ".join(f"{c} {t}" for c, t in _VM_TYPES.items())})
ON CONFLICT (vm_guid) DO UPDATE
SET host_id = EXCLUDED.host_id, {", ".join(f"{c} = EXCLUDED.{c}" for c in _VM_DATA)},
    synced_at = EXCLUDED.synced_at, deleted_at = NULL,
    changed_at = CASE WHEN ({columns("v." + c for c in _VM_CONFIG)}, v.deleted_at) IS DISTINCT FROM
                           ({columns("EXCLUDED." + c for c in _VM_CONFIG)}, NULL::timestamptz)
                      THEN EXCLUDED.changed_at ELSE v.changed_at END
WHERE v.synced_at <= EXCLUDED.synced_at
RETURNING (v.xmax = 0) AS inserted
"""

_DISK_VHD = ("vhd_type", "vhd_format", "file_size_bytes", "size_bytes")   # unknown when Get-VHD failed: kept
_UPSERT_DISKS = f"""
INSERT INTO hyperv_vm_disks AS d (vm_id, path, {columns(DISK_DATA)}, first_seen_at, synced_at)
SELECT v.id, x.path, {columns("x." + c for c in DISK_DATA)}, %(at)s, %(at)s
FROM jsonb_to_recordset(%(rows)s::jsonb) AS x({", ".join(f"{c} {t}" for c, t in DISK_TYPES.items())})
JOIN hyperv_vms v ON v.vm_guid = x.vm_guid
ON CONFLICT (vm_id, path) DO UPDATE
SET {", ".join(f"{c} = coalesce(EXCLUDED.{c}, d.{c})" if c in _DISK_VHD else f"{c} = EXCLUDED.{c}"
               for c in DISK_DATA)},
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
INSERT INTO hyperv_vm_network_adapters AS a (vm_id, adapter_id, {columns(_ADAPTER_DATA)}, synced_at)
SELECT v.id, x.adapter_id, {columns("x." + c for c in _ADAPTER_DATA)}, %(at)s
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


def sync_hypervisor_inventory(panel_db, interval, log=None) -> dict:
    """Sync Hyper visor inventory."""
    report = host_report("hypervisors_synced", "vms_seen", "vms_added", "vms_marked_deleted", "disks_seen",
                     "adapters_seen")
    at = interval.end

    with panel_db.get_conn() as conn:
        conn.autocommit = True

        def work(hook, host: Host) -> None:
            host_rows = hook.run_script("hyperv/get_host")
            vm_rows = hook.run_script("hyperv/get_vms")
            hv = one(HostRecord, host_rows, report, f"host {host.name} Get-VMHost")
            vms = {vm.Id: vm for vm in parse_records(VMRecord, vm_rows, report, f"host {host.name} VM")}
            complete = len(vms) == len(vm_rows)
            vm_rows_sql = [{"vm_guid": str(vm.Id), "name": vm.Name, "state": vm.State, "generation": vm.Generation,
                            "processor_count": vm.ProcessorCount, "memory_startup_bytes": vm.MemoryStartup,
                            "memory_assigned_bytes": vm.MemoryAssigned, "memory_demand_bytes": vm.MemoryDemand,
                            "dynamic_memory": vm.DynamicMemoryEnabled, "uptime_seconds": vm.Uptime,
                            "version": vm.Version, "config_path": vm.Path} for vm in vms.values()]
            disks = [disk_row(vm.Id, d) for vm in vms.values() for d in {d.Path: d for d in vm.Disks}.values()]
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

        return for_each_host(conn, hosts(conn), "hypervisor_inventory", at, report, log, work)
