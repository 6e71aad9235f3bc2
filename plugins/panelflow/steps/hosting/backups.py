"""TransferWork 2 and 3: Hostmatic database backups sent to the remote backup servers, and their clean-up.

2. :func:`backup_hostmatic_databases` — every active hosted database is backed up to each enabled
   ``backup_targets`` row that keeps its server's databases, once per the target's ``every_hours``
   (24) of data interval. A due backup is first recorded (``database_backups``, ``pending``, unique
   per database, target and the run's clock ``taken_for``), so a rerun of the same interval finds
   it and sends nothing twice; then

   - MariaDB/MySQL: ``mariadb-dump --single-transaction --routines --triggers --events`` gzipped
     while it streams into a private temp file (credentials in a 0600 ``--defaults-extra-file``
     there, never on the command line or in a log);
   - SQL Server: ``BACKUP DATABASE … WITH COMPRESSION, CHECKSUM`` through PowerShell
     (``include/powershell/mssql_backup/backup_database.ps1``, name and path as T-SQL parameters)
     into a staging folder on the SQL Server, fetched over that server's SFTP connection (checked
     against the SHA-256 the server computed) and removed there;

   and the one local file is sent to each target: SHA-256 computed while it streams, written as
   ``<name>.partial`` and renamed once the server holds every byte, so a killed upload never leaves
   a file that looks complete. Size and checksum go on the row (``sent``). A database is dumped once
   per run whatever the number of targets. A row not sent is retried by the next runs under the
   same name for a day, then marked ``failed``. At most ``backup_batch`` (20) backups per run.

3. :func:`delete_old_backups` — backups whose ``taken_for`` is older than their target's
   ``retention_days`` (90) before the run's data interval end — never the wall clock — are deleted
   on the remote server: each folder is listed once over SFTP and only the files the panel recorded
   (the backup and a leftover ``.partial``) are removed; anything else on the server is left alone.
   At most ``delete_batch`` (200) per run; a file already gone counts as deleted.

A backup server or database server that is down fails alone (:func:`panelflow.step.for_each`);
the step fails when every one it tried failed.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import posixpath
import re
import shutil
import subprocess
import tempfile
from collections import defaultdict
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import timedelta, timezone
from pathlib import Path

from panelflow.hooks.sftp_files import SftpFiles, remote_join, sftp_errors
from panelflow.step import EndpointsFailed, StepReport, first_line, for_each

BACKUP_BATCH = 20
DELETE_BATCH = 200
RETRY_WINDOW = timedelta(hours=24)
DUMP_TIMEOUT = 3600                       # seconds one mariadb-dump / restore may take
MSSQL_STAGING = r"D:\Backups\panelflow"   # where SQL Server writes a backup before it is fetched
_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")
_SHA256 = re.compile(r"[0-9A-Fa-f]{64}")


class BackupsFailed(EndpointsFailed):
    """Every backup the run tried failed (every backup server or database server down)."""


class DumpFailed(RuntimeError):
    """mariadb-dump / mariadb / the SQL Server backup ended in error: the database's failure."""


# -- MariaDB client tools (shared with the transfers) ---------------------------------------------

def _option_value(value: str) -> str:
    """A value for a MySQL option file, quoted by the file's rules (a newline cannot be written)."""
    if "\n" in value or "\r" in value:
        raise ValueError("a MySQL option value cannot hold a line break")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def client_options(conn_id: str, folder: Path) -> Path:
    """The database server's connection written as a 0600 ``[client]`` option file in ``folder``
    (a private temp dir): what ``--defaults-extra-file`` reads, so the password is never an argument."""
    from panelflow.hooks.hosted_mysql import HostedMySqlHook

    conn = HostedMySqlHook.get_connection(conn_id)
    if not conn.host or not conn.login:
        raise ValueError(f"connection {conn_id!r} needs a host and a login")
    lines = ["[client]", f"host={_option_value(conn.host)}", f"port={int(conn.port or 3306)}", "protocol=TCP",
             f"user={_option_value(conn.login)}", f"password={_option_value(conn.password or '')}"]
    if conn.extra_dejson.get("ssl_ca"):
        lines.append(f"ssl-ca={_option_value(str(conn.extra_dejson['ssl_ca']))}")
    path = folder / f"client-{conn_id}.cnf"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write("\n".join(lines) + "\n")
    return path


def database_argument(name: str) -> str:
    """A database name as one argument of the client tools: MySQL's identifier rules (checked by
    the hook), and never something they would read as an option."""
    from panelflow.hooks.hosted_mysql import quote_identifier

    quote_identifier(name)
    if name.startswith("-"):
        raise ValueError(f"database name {name!r} starts with '-': refused for the client tools")
    return name


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise DumpFailed(f"{name} is not installed on this worker")
    return path


def dump_database(options: Path, database: str, out, *, compress: bool) -> None:
    """``mariadb-dump`` of one database (no ``CREATE DATABASE``: it restores under any name) into the
    binary file ``out``, gzipped while it streams when ``compress``."""
    args = [_tool("mariadb-dump"), f"--defaults-extra-file={options}", "--single-transaction", "--quick",
            "--routines", "--triggers", "--events", "--hex-blob", "--default-character-set=utf8mb4",
            database_argument(database)]
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=errors, stdin=subprocess.DEVNULL)
        sink = gzip.GzipFile(fileobj=out, mode="wb", mtime=0) if compress else out
        try:
            while chunk := proc.stdout.read(1 << 20):
                sink.write(chunk)
            if compress:
                sink.close()
            code = proc.wait(DUMP_TIMEOUT)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if code != 0:
            errors.seek(0)
            raise DumpFailed(f"mariadb-dump {database} exited {code}: {errors.read(2000).decode(errors='replace')}")


def restore_database(options: Path, database: str, dump: Path) -> None:
    """Load a :func:`dump_database` file (plain SQL) into ``database`` with the ``mariadb`` client.
    The dump drops and re-creates each table, so loading it again ends with one copy."""
    args = [_tool("mariadb"), f"--defaults-extra-file={options}", "--default-character-set=utf8mb4",
            f"--database={database_argument(database)}"]
    with open(dump, "rb") as source:
        done = subprocess.run(args, stdin=source, capture_output=True, timeout=DUMP_TIMEOUT)
    if done.returncode != 0:
        raise DumpFailed(f"restore into {database} exited {done.returncode}: "
                         f"{done.stderr[:2000].decode(errors='replace')}")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


# -- 2. backups ------------------------------------------------------------------------------------

_GIVE_UP = """
UPDATE database_backups SET status = 'failed', last_error = coalesce(last_error, 'not sent within a day')
WHERE status = 'pending' AND taken_for <= %(oldest)s
"""

# (database, target) pairs with no backup sent or on its way within the target's period
_DUE = """
SELECT d.id, d.name, s.name, s.engine, t.id, t.remote_folder
FROM backup_targets t
JOIN hosting_servers s ON s.enabled AND s.role = 'database' AND (t.db_server_id IS NULL OR t.db_server_id = s.id)
JOIN hosted_databases d ON d.db_server_id = s.id AND d.status = 'active'
WHERE t.enabled AND NOT EXISTS (
    SELECT 1 FROM database_backups b
    WHERE b.database_id = d.id AND b.target_id = t.id AND b.status IN ('pending', 'sent', 'deleted')
      AND b.taken_for > %(at)s - make_interval(hours => t.every_hours))
ORDER BY (SELECT max(b.taken_for) FROM database_backups b WHERE b.database_id = d.id AND b.target_id = t.id)
         NULLS FIRST, d.id, t.id
LIMIT %(limit)s
"""

_RECORD = """
INSERT INTO database_backups (database_id, target_id, taken_for, remote_path, compression)
SELECT * FROM jsonb_to_recordset(%(rows)s::jsonb)
    AS x(database_id bigint, target_id bigint, taken_for timestamptz, remote_path text, compression text)
ON CONFLICT DO NOTHING
"""

_PENDING = """
SELECT b.id, b.remote_path, d.id, d.name, s.id, s.name, s.engine, s.conn_id, s.sftp_conn_id,
       t.id, t.name, t.sftp_conn_id
FROM database_backups b
JOIN hosted_databases d ON d.id = b.database_id AND d.status = 'active'
JOIN hosting_servers s ON s.id = d.db_server_id AND s.enabled
JOIN backup_targets t ON t.id = b.target_id AND t.enabled
WHERE b.status = 'pending' AND b.taken_for > %(oldest)s
ORDER BY b.taken_for, b.id
LIMIT %(limit)s
"""

_SENT = """
UPDATE database_backups SET status = 'sent', size_bytes = %(size)s, sha256 = %(sha)s, sent_at = %(at)s,
    attempts = attempts + 1, last_error = NULL
WHERE id = %(id)s AND status = 'pending'
"""

_NOT_SENT = "UPDATE database_backups SET attempts = attempts + 1, last_error = %(error)s WHERE id = %(id)s"


@dataclass(frozen=True)
class Pending:
    id: int
    remote_path: str
    database_id: int
    database: str
    server_id: int
    server: str
    engine: str
    conn_id: str
    server_sftp: str | None
    target_id: int
    target: str
    target_sftp: str

    @property
    def name(self) -> str:
        return f"{self.server}/{self.database}"


def slug(text: str) -> str:
    return _SAFE.sub("_", text).strip("._") or "_"


def remote_path(folder: str, server: str, database_id: int, database: str, engine: str, at) -> str:
    """``<folder>/<server>/<id>-<database>/<database>-<UTC stamp>.sql.gz|.bak``: names made safe for
    any file system, the database id keeping two similar names apart."""
    stamp = at.astimezone(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    suffix = ".bak" if engine == "mssql" else ".sql.gz"
    return remote_join(folder, slug(server), f"{database_id}-{slug(database)}", f"{slug(database)}-{stamp}{suffix}")


def record_due(conn, at, limit: int) -> int:
    rows = [{"database_id": db_id, "target_id": target_id, "taken_for": at.isoformat(),
             "remote_path": remote_path(folder, server, db_id, db, engine, at),
             "compression": "mssql" if engine == "mssql" else "gzip"}
            for db_id, db, server, engine, target_id, folder in conn.execute(_DUE, {"at": at, "limit": limit})]
    if rows:
        conn.execute(_RECORD, {"rows": json.dumps(rows)})
    return len(rows)


def _take_mysql(first: Pending, workdir: Path) -> Path:
    path = workdir / "backup.sql.gz"
    options = client_options(first.conn_id, workdir)
    with open(path, "wb") as out:
        dump_database(options, first.database, out, compress=True)
    return path


def _take_mssql(first: Pending, workdir: Path, params: dict, log) -> Path:
    """BACKUP DATABASE on the SQL Server (PowerShell), then the file fetched over its SFTP and removed there."""
    from panelflow.hooks.powershell import powershell_session

    if not first.server_sftp:
        raise DumpFailed(f"SQL Server {first.server} has no sftp_conn_id to fetch its backup through")
    staging = str(params.get("mssql_staging_folder", MSSQL_STAGING)).rstrip("\\")
    sftp_staging = str(params.get("mssql_staging_sftp_folder") or "/" + staging.replace("\\", "/"))
    file_name = posixpath.basename(first.remote_path)
    with powershell_session(first.conn_id, log) as ps:
        rows = ps.run_script("mssql_backup/backup_database", {"Database": first.database, "Folder": staging,
                                                              "FileName": file_name})
    if len(rows) != 1 or not isinstance(rows[0], dict) or not _SHA256.fullmatch(str(rows[0].get("Sha256"))):
        raise DumpFailed(f"backup_database on {first.server} printed {str(rows)[:200]}")
    expected = rows[0]["Sha256"].lower()
    path = workdir / "backup.bak"
    remote = remote_join(sftp_staging, file_name)
    with SftpFiles(first.server_sftp) as files:
        with files.open_read(remote) as source, open(path, "wb") as out:
            shutil.copyfileobj(source, out, 1 << 20)
        if file_sha256(path) != expected:
            raise DumpFailed(f"{remote} fetched from {first.server} does not match the SHA-256 the server computed")
        files.remove(remote)
    return path


def backup_hostmatic_databases(panel_db, interval, params=None, log=None) -> dict:
    """Process Hostmatic database backups and transfer them to relevant remote servers."""
    params = params or {}
    limit = int(params.get("backup_batch", BACKUP_BATCH))
    if limit < 1:
        raise ValueError("backup_batch must be >= 1")
    at = interval.end
    report = StepReport().zero("backups_due", "backups_sent", "backups_failed", "bytes_sent")
    with panel_db.get_conn() as conn, ExitStack() as sessions:
        conn.autocommit = True
        conn.execute(_GIVE_UP, {"oldest": at - RETRY_WINDOW})
        record_due(conn, at, limit)
        pending = [Pending(*row) for row in conn.execute(_PENDING, {"oldest": at - RETRY_WINDOW, "limit": limit})]
        report.add("backups_due", len(pending))
        by_database: dict[int, list[Pending]] = defaultdict(list)
        for p in pending:
            by_database[p.database_id].append(p)
        targets: dict[int, SftpFiles | BaseException] = {}
        errors = sftp_errors()

        def target(p: Pending) -> SftpFiles:
            if p.target_id not in targets:
                try:
                    targets[p.target_id] = sessions.enter_context(SftpFiles(p.target_sftp))
                except errors as exc:
                    targets[p.target_id] = exc
            found = targets[p.target_id]
            if isinstance(found, BaseException):
                raise found
            return found

        def back_up(rows: list[Pending]) -> None:
            first = rows[0]
            with tempfile.TemporaryDirectory(prefix="panelflow-backup-") as tmp:
                workdir = Path(tmp)
                local = _take_mssql(first, workdir, params, log) if first.engine == "mssql" else \
                    _take_mysql(first, workdir)
                size, sha = local.stat().st_size, file_sha256(local)
                for p in rows:
                    try:
                        files = target(p)
                        files.makedirs(posixpath.dirname(p.remote_path))
                        with open(local, "rb") as source:
                            sent_size, sent_sha = files.put_atomic(source, p.remote_path)
                        if (sent_size, sent_sha) != (size, sha):
                            raise OSError(f"{p.remote_path}: sent {sent_size} bytes {sent_sha}, file is {size} {sha}")
                    except errors as exc:
                        why = f"{type(exc).__name__}: {first_line(exc)}"
                        conn.execute(_NOT_SENT, {"id": p.id, "error": f"backup server {p.target}: {why}"})
                        report.add("backups_failed")
                        report.skip(f"backup server {p.target}: {why}", f"backup of {p.name}")
                        continue
                    conn.execute(_SENT, {"id": p.id, "size": size, "sha": sha, "at": at})
                    report.add("backups_sent")
                    report.add("bytes_sent", size)

        def failed(rows, exc, why) -> None:
            for p in rows:
                conn.execute(_NOT_SENT, {"id": p.id, "error": why[:1000]})
            report.add("backups_failed", len(rows))

        for_each(by_database.values(), back_up, report=report, kind="database", log=log,
                 expected=(DumpFailed, ValueError, *errors, *_powershell_errors()),
                 name=lambda rows: rows[0].name, what="database", on_failure=failed,
                 everything_failed=BackupsFailed)
    if report.counts["backups_due"] and not report.counts["backups_sent"]:
        raise BackupsFailed(f"no backup sent of {report.counts['backups_due']}: {report.examples[:5]}")
    return report.as_dict()


def _powershell_errors() -> tuple[type[BaseException], ...]:
    from panelflow.hooks.powershell import PowerShellError

    return (PowerShellError,)


# -- 3. clean-up -----------------------------------------------------------------------------------

_EXPIRED = """
SELECT b.id, b.remote_path, t.id, t.name, t.sftp_conn_id
FROM database_backups b
JOIN backup_targets t ON t.id = b.target_id AND t.enabled
WHERE b.status IN ('sent', 'failed') AND b.taken_for < %(at)s - make_interval(days => t.retention_days)
ORDER BY b.taken_for, b.id
LIMIT %(limit)s
"""

_DELETED = """
UPDATE database_backups SET status = 'deleted', deleted_at = %(at)s, last_error = NULL
WHERE id = ANY(%(ids)s::bigint[]) AND status IN ('sent', 'failed')
"""


@dataclass(frozen=True)
class Target:
    id: int
    name: str
    sftp_conn_id: str


def delete_old_backups(panel_db, interval, params=None, log=None) -> dict:
    """Delete 90 days old backups."""
    params = params or {}
    limit = int(params.get("delete_batch", DELETE_BATCH))
    if limit < 1:
        raise ValueError("delete_batch must be >= 1")
    at = interval.end
    report = StepReport().zero("backups_expired", "files_deleted", "files_missing")
    with panel_db.get_conn() as conn:
        conn.autocommit = True
        due: dict[Target, list[tuple[int, str]]] = defaultdict(list)
        for backup_id, path, target_id, name, conn_id in conn.execute(_EXPIRED, {"at": at, "limit": limit}):
            due[Target(target_id, name, conn_id)].append((backup_id, path))
            report.add("backups_expired")

        def clean(target: Target) -> None:
            folders: dict[str, list[tuple[int, str]]] = defaultdict(list)
            for backup_id, path in due[target]:
                folders[posixpath.dirname(path)].append((backup_id, posixpath.basename(path)))
            with SftpFiles(target.sftp_conn_id) as files:
                for folder, backups in folders.items():
                    listed = files.listing(folder)      # only recorded names that are there are removed
                    done = []
                    for backup_id, name in backups:
                        present = [n for n in (name, name + ".partial") if n in listed]
                        for n in present:
                            files.remove(remote_join(folder, n))
                        report.add("files_deleted" if name in present else "files_missing")
                        done.append(backup_id)
                    conn.execute(_DELETED, {"at": at, "ids": done})

        for_each(list(due), clean, report=report, kind="backup_server", expected=sftp_errors(), log=log,
                 what="backup server", everything_failed=BackupsFailed)
    return report.as_dict()
