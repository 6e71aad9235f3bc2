"""GroupActionWorkVPS 2 and 3: what the VM disks are stored on, and removing archived disk files.

2. :func:`update_disk_storage_types` — for each live VM disk, the physical media its file lives
   on (path → partition → disk → Storage Spaces pool → Get-PhysicalDisk MediaType/BusType):
   SSD, HDD, NVMe, SCM, Mixed (a tiered pool), Unspecified or Network (an SMB path). At most
   ``storage_paths_per_host`` (500) paths per host and run, the longest unchecked first.
3. :func:`delete_archived_vhd_files` — archived disks older than ``vhd_archive_days`` (7) before the
   run's clock, at most ``vhd_delete_batch`` (100) per run, removed on their host by a script that
   deletes only virtual disk files inside the host's archive folder (checked here first, and again
   on the host). A file already gone counts as deleted; a locked one stays archived and is tried
   again next run.
"""

from __future__ import annotations

import json
from datetime import timedelta

from panelflow.hooks.powershell import parse_records
from panelflow.steps.hyperv._backend import (VHD_EXTENSIONS, Host, RemovalRecord, StorageRecord, for_each_host,
                                             host_report, hosts, unsafe_path)

VHD_ARCHIVE_DAYS = 7
VHD_DELETE_BATCH = 100
STORAGE_PATHS_PER_HOST = 500

# -- 2. storage type of disks ----------------------------------------------------------------

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
    report = host_report("paths_checked", "disks_updated", "disks_retyped")
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

        return for_each_host(conn, hosts(conn, sorted(paths)), "disk_storage_types", at, report, log, work)


# -- 3. archived VHD files ------------------------------------------------------------------

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
    if unsafe_path(root):
        return f"the archive folder {root!r} is not an absolute local folder"
    if unsafe_path(path):
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
    report = host_report("files_due", "files_deleted", "files_missing", "files_refused", "files_failed")
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

        return for_each_host(conn, hosts(conn, sorted(due)), "archived_vhd_files", at, report, log, work)
