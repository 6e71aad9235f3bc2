"""UsageReportWork 3: PST files of mailbox exports deleted after the configured age.

A mailbox export (New-MailboxExportRequest -FilePath) writes a PST file to the Exchange server's
export share (``exchange_servers.pst_share_unc``, reached over SMB through the Airflow ``samba``
connection ``pst_smb_conn_id`` — host, share, login, password; no secret in the panel). Once it has
been there ``pst_retention_days`` (30) — its CompletionTimestamp before the run's clock less that
— it is cleaned up in two parts, each bounded to ``pst_delete_batch`` (100) exports per run, the
oldest first:

1. **The export request** is removed from Exchange, on each server with an export share
   (``exchange/remove_expired_mailbox_export_requests``: Get-MailboxExportRequest |
   Get-MailboxExportRequestStatistics, finished requests whose file is a ``.pst`` under the share,
   Remove-MailboxExportRequest). Each is kept as an ``exchange_pst_exports`` row (one per
   RequestGuid) with ``request_removed_at``; a removal Exchange refused is counted, named, and
   listed again next run.
2. **The file** of each removed request is deleted over SMB with Airflow's ``SambaHook``. A file
   already gone counts as deleted. ``deleted_at``.

Removing the request first means Exchange never points at a missing file; a file that could not be
deleted (locked, access denied, share unreachable) keeps its row, with ``last_error``, and is tried
again next run. Only a relative ``.pst`` path under the share is ever deleted: the script lists no
path with a ``.``/``..`` segment, and a path that would climb out is refused here too (named, never
recorded).

Failures: servers under :func:`._backend.each_server`'s rule, shares under the same rule of
:func:`panelflow.step.for_each`; if every server failed, the files already released are still
deleted before the step fails. No server with an export share: nothing to do (a summary).
"""

from __future__ import annotations

import errno
import json
from collections import defaultdict
from dataclasses import dataclass
from datetime import timedelta
from uuid import UUID

from pydantic import Field

from panelflow.hooks.powershell import parse_records
from panelflow.step import EndpointsFailed, StepReport, first_line, for_each

from ._backend import ExchangeServersFailed, Record, UtcTime, each_server, exchange_servers, utc_text

PST_RETENTION_DAYS = 30
PST_DELETE_BATCH = 100


class ExpiredExport(Record):
    RequestGuid: UUID
    Identity: str = Field(min_length=1)
    FilePath: str = Field(min_length=1)
    CompletionTimestamp: UtcTime
    Removed: bool
    Error: str | None = None


class PstSharesFailed(EndpointsFailed):
    """Every file share with PST files to delete failed: nothing was deleted."""


_SERVERS = """
SELECT id, pst_share_unc, pst_smb_conn_id FROM exchange_servers
WHERE enabled AND pst_share_unc IS NOT NULL AND pst_smb_conn_id IS NOT NULL
"""

_EXPORTS = """
INSERT INTO exchange_pst_exports AS e (request_guid, exchange_server_id, request_identity, smb_conn_id, file_path,
                                       completed_at, request_removed_at, last_error)
SELECT x.guid, %(server)s, x.identity, %(conn_id)s, x.path, x.completed_at, CASE WHEN x.removed THEN %(at)s END, x.error
FROM jsonb_to_recordset(%(rows)s::jsonb)
    AS x(guid uuid, identity text, path text, completed_at timestamptz, removed boolean, error text)
ON CONFLICT (request_guid) DO UPDATE SET
    request_removed_at = coalesce(e.request_removed_at, EXCLUDED.request_removed_at), last_error = EXCLUDED.last_error
WHERE e.request_removed_at IS NULL
"""

_DUE_FILES = """
SELECT id, smb_conn_id, file_path FROM exchange_pst_exports
WHERE deleted_at IS NULL AND request_removed_at IS NOT NULL
ORDER BY completed_at, id LIMIT %(limit)s
"""

_FILES_DONE = """
UPDATE exchange_pst_exports e
SET deleted_at = CASE WHEN x.deleted THEN %(at)s::timestamptz END, last_error = x.error
FROM jsonb_to_recordset(%(rows)s::jsonb) AS x(id bigint, deleted boolean, error text)
WHERE e.id = x.id AND e.deleted_at IS NULL
"""


@dataclass(frozen=True)
class Share:
    name: str                              # the samba connection id
    files: tuple[tuple[int, str], ...]     # (export id, path under the share, checked when recorded)


def share_path(path: str) -> str | None:
    """``path`` as a relative path under the share (``/``-separated), or None when it must not be
    deleted: absolute, a drive or UNC path, a ``.``/``..`` segment, not a ``.pst`` file."""
    parts = path.replace("\\", "/").split("/")
    if not path or path[0] in "\\/" or ":" in path or any(p in ("", ".", "..") for p in parts):
        return None
    return "/".join(parts) if parts[-1].lower().endswith(".pst") else None


def _share_failure(exc: BaseException) -> str | None:
    """A share's own failures (unreachable, login refused, no such share, connection missing); a
    bug propagates."""
    from airflow.exceptions import AirflowException
    from smbprotocol.exceptions import SMBException

    if isinstance(exc, (SMBException, AirflowException, ConnectionError, TimeoutError)) or (
            isinstance(exc, ValueError) and str(exc).startswith("Failed to connect")):
        return f"{type(exc).__name__}: {first_line(exc)}"
    return None


def under_share(file_path: str, root: str) -> str | None:
    """The path of ``file_path`` (a UNC path) under the share ``root``, or None when it is not a
    relative ``.pst`` path under it."""
    prefix = root.rstrip("\\") + "\\"
    if not file_path.lower().startswith(prefix.lower()):
        return None
    return share_path(file_path[len(prefix):])


def _remove_requests(conn, cutoff, at, limit: int, report: StepReport, log) -> None:
    """Part 1: each server's expired export requests removed and recorded."""
    shares = {server_id: (root, conn_id) for server_id, root, conn_id in conn.execute(_SERVERS)}

    def work(server, hook) -> None:
        root, conn_id = shares[server.id]
        rows = hook.run_script("exchange/remove_expired_mailbox_export_requests",
                               {"CompletedBefore": utc_text(cutoff), "ShareRoot": root, "Limit": limit})
        records = []
        for r in parse_records(ExpiredExport, rows, report, f"server {server.name} export request"):
            path = under_share(r.FilePath, root)
            if path is None or r.CompletionTimestamp is None:
                report.add("requests_refused")
                report.skip("refused: not a .pst file under the export share", f"server {server.name} {r.FilePath}")
                continue
            report.add("requests_removed" if r.Removed else "requests_failed")
            if not r.Removed:
                report.skip(f"request not removed: {first_line(Exception(r.Error or 'no reason given'))}",
                            f"server {server.name} export {r.Identity}")
            records.append({"guid": str(r.RequestGuid), "identity": r.Identity, "path": path,
                            "completed_at": r.CompletionTimestamp.isoformat(), "removed": r.Removed,
                            "error": None if r.Error is None else r.Error[:1000]})
        with conn.transaction():
            conn.execute(_EXPORTS, {"server": server.id, "conn_id": conn_id, "at": at, "rows": json.dumps(records)})

    each_server(exchange_servers(conn, shares), report, log, work)


def _delete_files(conn, at, limit: int, report: StepReport, log) -> None:
    """Part 2: the released exports' files deleted over SMB, share by share."""
    from smbprotocol.exceptions import SMBOSError

    files: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for export_id, conn_id, path in conn.execute(_DUE_FILES, {"limit": limit}):
        files[conn_id].append((export_id, path))
        report.add("files_due")

    def work(share: Share) -> None:
        from airflow.providers.samba.hooks.samba import SambaHook

        outcomes = []
        with SambaHook(share.name) as smb:
            for export_id, path in share.files:
                try:
                    smb.remove(path)
                    report.add("files_deleted")
                except SMBOSError as exc:
                    if exc.errno != errno.ENOENT:   # locked, access denied …: kept, tried next run
                        report.add("files_failed")
                        report.skip(f"not deleted: {first_line(exc, 200)}", f"share {share.name} {path}")
                        outcomes.append({"id": export_id, "deleted": False, "error": first_line(exc, 1000)})
                        continue
                    report.add("files_missing")
                outcomes.append({"id": export_id, "deleted": True, "error": None})
        with conn.transaction():
            conn.execute(_FILES_DONE, {"at": at, "rows": json.dumps(outcomes)})

    for_each([Share(name, tuple(rows)) for name, rows in sorted(files.items())], work, report=report, kind="share",
             reason=_share_failure, log=log, everything_failed=PstSharesFailed, what="PST file share")


def delete_expired_pst_files(panel_db, interval, params=None, log=None) -> dict:
    """Automatic delete PST files after specific time: export requests removed, files deleted over SMB."""
    params = params or {}
    days = int(params.get("pst_retention_days", PST_RETENTION_DAYS))
    limit = int(params.get("pst_delete_batch", PST_DELETE_BATCH))
    if days < 0 or limit < 1:
        raise ValueError("pst_retention_days must be >= 0 and pst_delete_batch >= 1")
    at = interval.end
    cutoff = at - timedelta(days=days)
    report = StepReport().zero("requests_removed", "requests_failed", "requests_refused", "files_due", "files_deleted",
                               "files_missing", "files_failed")
    with panel_db.get_conn() as conn:
        conn.autocommit = True
        servers_failed = None
        try:
            _remove_requests(conn, cutoff, at, limit, report, log)
        except ExchangeServersFailed as exc:   # the files released before are still deleted
            servers_failed = exc
        _delete_files(conn, at, limit, report, log)
    if servers_failed is not None:
        raise servers_failed
    return {"cutoff": cutoff.isoformat(), **report.as_dict()}
