"""CallDataProcessWork 2: the Response Group workflow prompts, copied from the pools' file shares.

Lync / Skype for Business keeps the audio of its Response Group workflows (welcome messages, hold
music, after-hours prompts) on the pool's file store, under ``…\\AppServerFiles\\RGS``. The panel's
workflow pages play and offer these files, so each pool with an audio share (``lync_pools.audio_conn_id``:
an Airflow ``samba`` connection — host, share, login, password, port; ``audio_folder`` under it)
is walked over SMB (``SambaHook`` on smbprotocol) and its prompts are copied to the panel's storage.

- Only audio files (``.wav``, ``.wma``, ``.mp3`` — what the Response Group service plays), each at
  most ``max_audio_bytes``; at most ``max_audio_files`` files and ``max_audio_folders`` folders per
  pool and run (more is reported, the rest waits for the next run; nothing is marked removed then).
  Reparse points (links) are not followed.
- Changed files only: a file whose size and last-write time on the share equal the recorded ones
  (``lync_workflow_audio_files``) is not read. Otherwise it is streamed into a temporary file beside
  its destination while its SHA-256 is computed; equal to the recorded checksum → the copy stays
  (only size and time are updated), else the temporary file replaces the copy in one rename — a
  reader never sees half a prompt, and a worker killed mid-copy leaves the old copy and a row that
  still describes it (the next run copies again). One row per pool and path (primary key).
- A file gone from the share (after a complete walk) is marked ``removed_at``; its copy is kept.

Where the copies go: ``params["audio_dir"]``, else ``$PANELFLOW_HOME/lync-audio`` (``make run``'s
state folder), else ``$AIRFLOW_HOME/lync-audio``; then ``<pool>/<path on the share>``.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

from panelflow.step import StepReport
from panelflow.steps.lync._backend import Pool, for_each_pool, pool_report, pools

AUDIO_EXTENSIONS = (".wav", ".wma", ".mp3")
MAX_AUDIO_FILES = 5000
MAX_AUDIO_FOLDERS = 2000
MAX_AUDIO_BYTES = 50 * 1024 * 1024
CHUNK = 1024 * 1024
FILE_ATTRIBUTE_DIRECTORY = 0x10
FILE_ATTRIBUTE_REPARSE_POINT = 0x400
UNSAFE_PART = re.compile(r"^\.{1,2}$|[\x00-\x1f\\:]")

_KNOWN = "SELECT path, size_bytes, modified_at, sha256, local_path, removed_at FROM lync_workflow_audio_files" \
         " WHERE pool_id = %s"

_UPSERT = """
INSERT INTO lync_workflow_audio_files AS f (pool_id, path, size_bytes, modified_at, sha256, local_path, copied_at,
                                            checked_at)
VALUES (%(pool)s, %(path)s, %(size)s, %(modified)s, %(sha)s, %(local)s, %(at)s, %(at)s)
ON CONFLICT (pool_id, path) DO UPDATE
SET size_bytes = EXCLUDED.size_bytes, modified_at = EXCLUDED.modified_at, checked_at = EXCLUDED.checked_at,
    removed_at = NULL, local_path = EXCLUDED.local_path,
    copied_at = CASE WHEN f.sha256 = EXCLUDED.sha256 THEN f.copied_at ELSE EXCLUDED.copied_at END,
    sha256 = EXCLUDED.sha256
"""

_CHECKED = """
UPDATE lync_workflow_audio_files SET checked_at = %(at)s
WHERE pool_id = %(pool)s AND path = ANY(%(paths)s::text[])
"""

_REMOVED = """
UPDATE lync_workflow_audio_files SET removed_at = %(at)s
WHERE pool_id = %(pool)s AND removed_at IS NULL AND path <> ALL(%(seen)s::text[])
"""


class AudioFileTooLarge(Exception):
    """The file grew past the limit while it was read: left for an operator, like one listed too large."""


@dataclass(frozen=True)
class Remote:
    path: str          # relative to the audio folder, '/'-separated
    size: int
    modified: datetime


def audio_dir(params: dict) -> Path:
    if params.get("audio_dir"):
        return Path(params["audio_dir"])
    home = os.environ.get("PANELFLOW_HOME") or os.environ.get("AIRFLOW_HOME") or str(Path.home() / "airflow")
    return Path(home) / "lync-audio"


def _share_failure(exc: BaseException) -> str | None:
    """The errors a share can give (unreachable, refused login, no such share or folder, its
    connection missing); anything else — a local disk error, a bug — propagates."""
    from airflow.exceptions import AirflowException
    from smbprotocol.exceptions import SMBException

    if isinstance(exc, (SMBException, AirflowException, ConnectionError, TimeoutError)) or (
            isinstance(exc, ValueError) and str(exc).startswith("Failed to connect")):
        return f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:300]}"
    return None


def sync_workflow_audio_files(panel_db, interval, params=None, log=None) -> dict:
    """Sync workflow audio files from remote servers."""
    params = params or {}
    limits = (int(params.get("max_audio_files", MAX_AUDIO_FILES)),
              int(params.get("max_audio_folders", MAX_AUDIO_FOLDERS)),
              int(params.get("max_audio_bytes", MAX_AUDIO_BYTES)))
    root = audio_dir(params)
    report = pool_report("pools_without_audio_share", "files_seen", "files_unchanged", "files_copied",
                         "files_same_content", "files_removed")
    with panel_db.get_conn() as conn:
        conn.autocommit = True
        every = pools(conn)
        targets = [p for p in every if p.audio_conn_id and p.audio_folder is not None]
        report.add("pools_without_audio_share", len(every) - len(targets))

        def work(pool: Pool) -> None:
            _sync_pool(conn, pool, root, limits, interval.end, report)

        outcome = for_each_pool(targets, work, report, log, reason=_share_failure)
    summary = {**report.as_dict(), "audio_dir": str(root), "failed_pools": outcome.failed}
    if log is not None:
        log.info("Lync workflow audio files: %s", summary)
    return summary


def _walk(smb, folder: str, limits: tuple[int, int, int], report: StepReport, pool: Pool) -> tuple[list[Remote], bool]:
    """The audio files under ``folder`` (breadth first, bounded) and whether the walk was complete."""
    max_files, max_folders, max_bytes = limits
    found: list[Remote] = []
    pending, folders = [""], 0
    while pending:
        if folders >= max_folders:
            report.skip(f"more than {max_folders} folders: the rest waits for the next run", f"pool {pool.name}")
            return found, False
        relative = pending.pop(0)
        folders += 1
        for entry in smb.scandir(str(PurePosixPath(folder, relative)) if relative else folder):
            info = entry.smb_info
            path = f"{relative}/{entry.name}" if relative else entry.name
            if info.file_attributes & FILE_ATTRIBUTE_REPARSE_POINT:
                continue
            if UNSAFE_PART.search(entry.name):
                report.skip("unsafe file name", f"{pool.name}:{path}")
                continue
            if info.file_attributes & FILE_ATTRIBUTE_DIRECTORY:
                pending.append(path)
                continue
            if not entry.name.lower().endswith(AUDIO_EXTENSIONS):
                continue
            if info.end_of_file > max_bytes:
                report.skip(f"larger than {max_bytes} bytes", f"{pool.name}:{path}")
                continue
            if len(found) >= max_files:
                report.skip(f"more than {max_files} audio files: the rest waits for the next run", f"pool {pool.name}")
                return found, False
            modified = info.last_write_time
            found.append(Remote(path, info.end_of_file,
                                modified if modified.tzinfo else modified.replace(tzinfo=timezone.utc)))
    return found, True


def _sync_pool(conn, pool: Pool, root: Path, limits, at, report: StepReport) -> None:
    from airflow.providers.samba.hooks.samba import SambaHook

    folder = pool.audio_folder.replace("\\", "/").strip("/")
    target = root / re.sub(r"[^A-Za-z0-9._-]", "_", pool.name)
    known = {r[0]: r[1:] for r in conn.execute(_KNOWN, (pool.id,)).fetchall()}
    unchanged: list[str] = []
    with SambaHook(pool.audio_conn_id) as smb:
        files, complete = _walk(smb, folder, limits, report, pool)
        report.add("files_seen", len(files))
        for remote in files:
            row = known.get(remote.path)
            local = target.joinpath(*remote.path.split("/"))
            if row is not None and row[4] is None and (row[0], row[1]) == (remote.size, remote.modified) \
                    and local.is_file():
                unchanged.append(remote.path)
                continue
            try:
                sha = _copy(smb, f"{folder}/{remote.path}" if folder else remote.path, local,
                            row[2] if row is not None and local.is_file() else None, limits[2])
            except AudioFileTooLarge as exc:
                report.skip(str(exc), f"{pool.name}:{remote.path}")
                continue
            conn.execute(_UPSERT, {"pool": pool.id, "path": remote.path, "size": remote.size,
                                   "modified": remote.modified, "sha": sha, "local": str(local), "at": at})
            report.add("files_same_content" if row is not None and row[2] == sha else "files_copied")
    report.add("files_unchanged", len(unchanged))
    if unchanged:
        conn.execute(_CHECKED, {"pool": pool.id, "paths": unchanged, "at": at})
    if complete:
        report.add("files_removed", conn.execute(_REMOVED, {"pool": pool.id, "at": at,
                                                            "seen": [f.path for f in files]}).rowcount)


def _copy(smb, remote: str, local: Path, known_sha: str | None, max_bytes: int) -> str:
    """Stream ``remote`` into a temporary file beside ``local`` hashing it; replace ``local`` only when
    the content differs from ``known_sha`` (the copy there). Returns the content's SHA-256."""
    local.parent.mkdir(parents=True, exist_ok=True)
    digest, size = hashlib.sha256(), 0
    fd, temp = tempfile.mkstemp(prefix=f".{local.name}.", suffix=".part", dir=local.parent)
    try:
        with os.fdopen(fd, "wb") as out, smb.open_file(remote, mode="rb") as source:
            while chunk := source.read(CHUNK):
                size += len(chunk)
                if size > max_bytes:
                    raise AudioFileTooLarge(f"larger than {max_bytes} bytes")
                digest.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        sha = digest.hexdigest()
        if sha != known_sha:
            os.replace(temp, local)
        return sha
    finally:
        if os.path.exists(temp):
            os.unlink(temp)
