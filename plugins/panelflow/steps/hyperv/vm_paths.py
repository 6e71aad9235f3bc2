"""ProvisioningWork 6: a VM's new paths, after its files moved (Move-VMStorage), from its previous locations.

A storage migration moves a VM's folder and disks while it runs; the VM keeps its GUID and its
disks keep their controller slots. The inventory (HyperVHomeBackendThread) would see a moved disk
as one disk gone and another new, losing what the panel knows of it (its storage type, when it was
first seen, the archive and threshold history keyed by its row). So every ten minutes, per host,
:func:`update_vm_paths` reads each VM's folder and the disk in each slot (``hyperv/get_vm_paths``)
and, for the panel's live VMs of that host:

- a disk row whose slot now holds another file is moved to the new path in place (its storage
  type cleared, so GroupActionWorkVPS 2 checks the new media first); left alone when the panel
  already has a row for the new path (the inventory got there first);
- the VM's ``config_path`` follows its folder;
- each move is recorded once in ``hyperv_vm_path_changes`` (VM, kind, slot, old and new path).

Paths compare case-insensitively (NTFS). One script call and one statement per host, its size bounded
by the host (Hyper-V runs at most 1,024 VMs per host); a rerun changes nothing.
"""

from __future__ import annotations

import json

from panelflow.hooks.powershell import parse_records
from panelflow.steps.hyperv._backend import Host, VMPathsRecord, for_each_host, host_report, hosts

_HOSTS_WITH_VMS = "SELECT DISTINCT host_id FROM hyperv_vms WHERE deleted_at IS NULL"

_MOVE = """
WITH x AS (
    SELECT * FROM jsonb_to_recordset(%(vms)s::jsonb) AS x(vm_guid uuid, path text)
), d AS (
    SELECT * FROM jsonb_to_recordset(%(disks)s::jsonb)
        AS d(vm_guid uuid, controller_type text, controller_number integer, controller_location integer, path text)
), live AS (
    SELECT v.* FROM hyperv_vms v WHERE v.host_id = %(host)s AND v.deleted_at IS NULL
), folders AS (
    SELECT v.id AS vm_id, v.config_path AS old_path, x.path AS new_path
    FROM x JOIN live v ON v.vm_guid = x.vm_guid
    WHERE x.path IS NOT NULL AND v.config_path IS NOT NULL AND lower(v.config_path) <> lower(x.path)
), disks AS (
    SELECT k.id, k.vm_id, k.path AS old_path, d.path AS new_path,
           d.controller_type || ' ' || d.controller_number || ':' || d.controller_location AS slot
    FROM d JOIN live v ON v.vm_guid = d.vm_guid
    JOIN hyperv_vm_disks k ON k.vm_id = v.id AND k.controller_type = d.controller_type
         AND k.controller_number = d.controller_number AND k.controller_location = d.controller_location
    WHERE lower(k.path) <> lower(d.path)
      AND NOT EXISTS (SELECT 1 FROM hyperv_vm_disks o WHERE o.vm_id = v.id AND lower(o.path) = lower(d.path))
), moved_folders AS (
    UPDATE hyperv_vms v SET config_path = f.new_path, changed_at = greatest(v.changed_at, %(at)s)
    FROM folders f WHERE v.id = f.vm_id
    RETURNING 1
), moved_disks AS (
    UPDATE hyperv_vm_disks k SET path = m.new_path, storage_type = NULL, storage_pool = NULL, storage_checked_at = NULL
    FROM disks m WHERE k.id = m.id
    RETURNING 1
), history AS (
    INSERT INTO hyperv_vm_path_changes (vm_id, kind, slot, old_path, new_path, changed_at)
    SELECT vm_id, 'configuration', '', old_path, new_path, %(at)s FROM folders
    UNION ALL
    SELECT vm_id, 'disk', slot, old_path, new_path, %(at)s FROM disks
    ON CONFLICT DO NOTHING
)
SELECT (SELECT count(*) FROM moved_folders), (SELECT count(*) FROM moved_disks)
"""


def update_vm_paths(panel_db, interval, log=None) -> dict:
    """Update new VM path from previous VHD locations: moved disks and folders followed in place."""
    at = interval.end
    report = host_report("vms_read", "folders_moved", "disks_moved")
    with panel_db.get_conn() as conn:
        conn.autocommit = True
        ids = [r[0] for r in conn.execute(_HOSTS_WITH_VMS).fetchall()]

        def work(hook, host: Host) -> None:
            vms = {vm.Id: vm for vm in parse_records(VMPathsRecord, hook.run_script("hyperv/get_vm_paths"), report,
                                                     f"host {host.name} VM")}
            report.add("vms_read", len(vms))
            disks = [{"vm_guid": str(vm.Id), "controller_type": d.ControllerType,
                      "controller_number": d.ControllerNumber, "controller_location": d.ControllerLocation,
                      "path": d.Path}
                     for vm in vms.values() for d in vm.Disks if d.ControllerType is not None]
            with conn.transaction():
                folders, moved = conn.execute(_MOVE, {
                    "host": host.id, "at": at, "disks": json.dumps(disks),
                    "vms": json.dumps([{"vm_guid": str(vm.Id), "path": vm.Path} for vm in vms.values()])}).fetchone()
            report.add("folders_moved", folders)
            report.add("disks_moved", moved)

        return for_each_host(conn, hosts(conn, sorted(ids)), "vm_paths", at, report, log, work)
