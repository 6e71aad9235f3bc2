"""TransferWork 1: the transfer queue — a site's files or a database moved to another server.

Which reading, and why: in the panel's model (0024) a site lives on one web server and a database
on one database server, and the registrar model (0010) has no transfer order at all (registrar
data is only read back by DomainNameDataSyncThread). TransferWork sits in the hosting domain beside
the database backups, so "transfer queue orders" are moves between hosting servers: the panel
writes a ``hosting_transfers`` row (``queued``) per site or database to move; this step works it.

Each order goes through stages recorded on its row before and after their work, and each stage's
work is idempotent, so a run killed at any point (kill -9 of the worker) is resumed at the
recorded stage by the next run and ends with exactly one copy:

1. ``copying_files`` — the site's content folder streamed from the old web server's SFTP to the
   new one's (``hosting_servers.sftp_conn_id``: OpenSSH Server for Windows; host keys pinned) into
   ``target_path``. Each file lands as ``<name>.partial`` and is renamed once whole, with the
   source's mtime; a file already there with the source's size and mtime is not sent again. Leftover
   ``.partial`` files of a killed run are removed at the end of the stage.
2. ``copying_database`` — MariaDB/MySQL: ``mariadb-dump`` of the old server's database, restored
   with the ``mariadb`` client into the same name on the new server (credentials in a 0600 option
   file); the dump drops and re-creates each table, so a second restore replaces a half-done
   one. The database's users are re-created there from ``SHOW CREATE USER`` (same password hash)
   and granted the database. Then every table's row count is compared: a difference fails the
   attempt (a database still being written to is retried, never switched half-copied).
3. ``switching`` — in one panel transaction the site's row (or the database's, with its users)
   points at the new server and the order is ``done``. The old copy is left in place for
   the operator to remove once the move is confirmed; the IIS site and DNS on the new server are
   the site jobs' work (GroupActionWorkGeneral), not this step's.

An order is worked by one run at a time (a PostgreSQL advisory lock held by the step's session;
a killed run's lock goes with its connection). A server that is down or refuses fails that order's
attempt (``last_error``, ``attempts``), which the next run retries; after ``max_attempts`` (5) the
order is ``failed``. An order the step cannot do (SQL Server databases, a server without the
connection it needs, a name already taken on the new server) is ``failed`` at once, with why.
At most ``transfer_batch`` (5) orders per run, within ``run_budget_seconds`` (8 minutes: the thread
runs every 10 and shares the ``hostmatic`` run group with the group actions, which must not wait
behind a long copy): a file copy still going when the budget is spent stops between two files and
the next run goes on (files already sent are not sent again); orders not reached wait for the next
run. A database's dump and restore is one piece of work, bounded by the thread's 60-minute timeout.
"""

from __future__ import annotations

import posixpath
import re
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

from panelflow.hooks.hosted_mysql import HostedMySqlHook, quote_identifier
from panelflow.hooks.sftp_files import PARTIAL, SftpFiles, remote_join, sftp_errors
from panelflow.step import StepReport, first_line, for_each
from panelflow.steps.hosting._backend import HostingServersFailed, backend_error
from panelflow.steps.hosting.backups import DumpFailed, client_options, dump_database, restore_database

TRANSFER_BATCH = 5
MAX_ATTEMPTS = 5
MAX_FILES = 200_000
PROGRESS_EVERY = 50                       # files between two progress writes on the order row
RUN_BUDGET_SECONDS = 8 * 60               # the thread runs every 10 minutes, in the hostmatic run group
LOCK_SPACE = 260_026                      # advisory-lock key space of the transfer queue
_WINDOWS = re.compile(r"^([A-Za-z]):[\\/]")


class TransferRefused(ValueError):
    """The order cannot be done as written: it is failed at once, with this reason."""


class BudgetSpent(Exception):
    """The run's time budget ran out in the middle of a stage: the next run goes on from there."""


@dataclass(frozen=True)
class Order:
    id: int
    stage: str
    attempts: int
    site_id: int | None
    site_path: str | None
    target_path: str | None
    database_id: int | None
    database: str | None
    from_id: int
    from_name: str
    from_role: str
    from_engine: str
    from_conn: str
    from_sftp: str | None
    to_id: int
    to_name: str
    to_role: str
    to_engine: str
    to_conn: str
    to_sftp: str | None

    @property
    def name(self) -> str:
        return f"#{self.id}"


_OPEN = """
SELECT t.id, t.stage, t.attempts, t.site_id, s.physical_path, t.target_path, t.database_id, d.name,
       f.id, f.name, f.role, f.engine, f.conn_id, f.sftp_conn_id, o.id, o.name, o.role, o.engine, o.conn_id,
       o.sftp_conn_id
FROM hosting_transfers t
JOIN hosting_servers f ON f.id = t.from_server_id
JOIN hosting_servers o ON o.id = t.to_server_id
LEFT JOIN hosted_sites s ON s.id = t.site_id
LEFT JOIN hosted_databases d ON d.id = t.database_id
WHERE t.stage NOT IN ('done', 'failed')
ORDER BY t.id
LIMIT %(limit)s
"""

_ENTER = """
UPDATE hosting_transfers SET stage = %(stage)s, stage_started_at = %(at)s, started_at = coalesce(started_at, %(at)s),
    stage_times = CASE WHEN %(finished)s::text IS NULL THEN stage_times
                       ELSE stage_times || jsonb_build_object(%(finished)s::text, %(at)s::timestamptz) END
WHERE id = %(id)s AND stage = %(from)s
"""

_PROGRESS = "UPDATE hosting_transfers SET files_copied = %s, bytes_copied = %s WHERE id = %s"
_TABLES = "UPDATE hosting_transfers SET tables_copied = %s WHERE id = %s"
_ATTEMPT_FAILED = """
UPDATE hosting_transfers SET attempts = attempts + 1, last_error = %(error)s,
    stage = CASE WHEN attempts + 1 >= %(max)s OR %(final)s THEN 'failed' ELSE stage END,
    finished_at = CASE WHEN attempts + 1 >= %(max)s OR %(final)s THEN %(at)s::timestamptz END
WHERE id = %(id)s
"""

# the switch: the panel's rows follow the copy, all at once (only from where the order says they are)
_SWITCH_SITE = ("UPDATE hosted_sites SET web_server_id = %(to)s, physical_path = %(path)s"
                " WHERE id = %(site)s AND web_server_id = %(from)s")
_SWITCH_DATABASE = "UPDATE hosted_databases SET db_server_id = %(to)s WHERE id = %(db)s AND db_server_id = %(from)s"
_SWITCH_USERS = ("UPDATE hosted_database_users SET db_server_id = %(to)s"
                 " WHERE database_id = %(db)s AND db_server_id = %(from)s AND status = 'active'")
_DONE = """
UPDATE hosting_transfers SET stage = 'done', finished_at = %(at)s, last_error = NULL,
    stage_times = stage_times || jsonb_build_object('switching', %(at)s::timestamptz)
WHERE id = %(id)s AND stage = 'switching'
"""

_NAME_TAKEN = "SELECT 1 FROM hosted_databases WHERE db_server_id = %s AND name = %s AND id <> %s"
_USERS = "SELECT user_name FROM hosted_database_users WHERE database_id = %s AND status = 'active' ORDER BY user_name"


def sftp_path(path: str) -> str:
    """A content folder as SFTP sees it: ``D:\\Sites\\x`` → ``/D:/Sites/x`` (OpenSSH for Windows); a
    POSIX path stays as it is."""
    if _WINDOWS.match(path):
        return "/" + path.replace("\\", "/")
    return path


def _next_stage(order: Order, after: str) -> str:
    stages = ["queued"]
    if order.site_id is not None:
        stages.append("copying_files")
    if order.database_id is not None:
        stages.append("copying_database")
    stages.append("switching")
    return stages[stages.index(after) + 1]


def _check(order: Order) -> None:
    role = "web" if order.site_id is not None else "database"
    if (order.from_role, order.to_role) != (role, role):
        raise TransferRefused(f"a {'site' if role == 'web' else 'database'} moves between {role} servers"
                              f" ({order.from_name} is {order.from_role}, {order.to_name} is {order.to_role})")
    if order.site_id is not None:
        if not (order.from_sftp and order.to_sftp):
            raise TransferRefused("both web servers need an sftp_conn_id to move the site's files")
        if not order.site_path:
            raise TransferRefused("the site has no physical path on its web server")
        for path in (order.site_path, order.target_path):
            if any(seg in (".", "..") for seg in re.split(r"[\\/]", path)):
                raise TransferRefused(f"folder {path!r} climbs out with '.' or '..'")
    if order.database_id is not None and (order.from_engine, order.to_engine) != ("mysql", "mysql"):
        raise TransferRefused("only MySQL/MariaDB databases are moved by this step "
                              f"({order.from_engine} → {order.to_engine})")


class _Mover:
    def __init__(self, conn, at, report: StepReport, log, deadline: float):
        self.conn, self.at, self.report, self.log, self.deadline = conn, at, report, log, deadline

    def spent(self) -> bool:
        return time.monotonic() > self.deadline

    def enter(self, order: Order, stage: str, finished: str | None) -> Order:
        self.conn.execute(_ENTER, {"id": order.id, "stage": stage, "from": order.stage, "at": self.at,
                                   "finished": finished})
        return replace(order, stage=stage)

    def work(self, order: Order) -> None:
        _check(order)
        try:
            self._stages(order)
        except BudgetSpent:                    # not a failure: the files sent so far stay, the next run goes on
            self.report.add("transfers_paused")

    def _stages(self, order: Order) -> None:
        if order.stage == "queued":
            order = self.enter(order, _next_stage(order, "queued"), None)
        if order.stage == "copying_files":
            self.copy_files(order)
            order = self.enter(order, _next_stage(order, "copying_files"), "copying_files")
        if order.stage == "copying_database":
            self.copy_database(order)
            order = self.enter(order, "switching", "copying_database")
        if order.stage == "switching":
            self.switch(order)
        self.report.add("transfers_done")

    # -- 1. files ---------------------------------------------------------------------------------

    def copy_files(self, order: Order) -> None:
        source_root, target_root = sftp_path(order.site_path), sftp_path(order.target_path)
        copied = sent = 0
        with SftpFiles(order.from_sftp) as source, SftpFiles(order.to_sftp) as target:
            target.makedirs(target_root)
            made = {target_root}
            for rel, attrs in source.walk(source_root, MAX_FILES):
                if self.spent():
                    self.conn.execute(_PROGRESS, (copied, sent, order.id))
                    raise BudgetSpent()
                path = remote_join(target_root, rel)
                there = target.stat_or_none(path)
                if there is not None and (there.st_size, int(there.st_mtime)) == (attrs.st_size, int(attrs.st_mtime)):
                    self.report.add("files_already_there")
                    continue
                folder = posixpath.dirname(path)
                if folder not in made:
                    target.makedirs(folder)
                    made.add(folder)
                with source.open_read(remote_join(source_root, rel)) as stream:
                    size, _ = target.put_atomic(stream, path, mtime=int(attrs.st_mtime))
                copied, sent = copied + 1, sent + size
                self.report.add("files_copied")
                self.report.add("bytes_copied", size)
                if copied % PROGRESS_EVERY == 0:
                    self.conn.execute(_PROGRESS, (copied, sent, order.id))
            self._sweep_partials(target, target_root)
        self.conn.execute(_PROGRESS, (copied, sent, order.id))

    def _sweep_partials(self, target: SftpFiles, root: str) -> None:
        """``.partial`` files a killed run left under the new folder (their files were sent again)."""
        pending = [root]
        while pending:
            folder = pending.pop()
            for name, attrs in target.listing(folder).items():
                if attrs.st_mode is not None and (attrs.st_mode & 0o170000) == 0o040000:
                    pending.append(remote_join(folder, name))
                elif name.endswith(PARTIAL):
                    target.remove(remote_join(folder, name))
                    self.report.add("partials_removed")

    # -- 2. database ------------------------------------------------------------------------------

    def copy_database(self, order: Order) -> None:
        if self.conn.execute(_NAME_TAKEN, (order.to_id, order.database, order.database_id)).fetchone():
            raise TransferRefused(f"{order.to_name} already has a database {order.database!r} in the panel")
        users = [u for (u,) in self.conn.execute(_USERS, (order.database_id,))]
        with tempfile.TemporaryDirectory(prefix="panelflow-transfer-") as tmp, \
                HostedMySqlHook(order.from_conn) as source, HostedMySqlHook(order.to_conn) as target:
            workdir = Path(tmp)
            dump = workdir / "database.sql"
            with open(dump, "wb") as out:
                dump_database(client_options(order.from_conn, workdir), order.database, out, compress=False)
            target.create_database(order.database)
            restore_database(client_options(order.to_conn, workdir), order.database, dump)
            self._copy_users(source, target, order, users)
            before, after = table_counts(source, order.database), table_counts(target, order.database)
            if before != after:
                differ = sorted(t for t in set(before) | set(after) if before.get(t) != after.get(t))
                raise DumpFailed(f"rows differ after the restore on {order.to_name} in {differ[:5]}"
                                 " (still being written to?): tried again next run")
        self.conn.execute(_TABLES, (len(after), order.id))
        self.report.add("tables_copied", len(after))

    def _copy_users(self, source: HostedMySqlHook, target: HostedMySqlHook, order: Order, users: list[str]) -> None:
        """Each of the database's users on the new server with its password hash, granted the database."""
        for user in users:
            if not target.user_hosts(user):
                hosts = source.user_hosts(user)
                if not hosts:
                    raise TransferRefused(f"user {user!r} of the database is missing on {order.from_name}")
                with source.get_conn().cursor() as cur:
                    cur.execute("SHOW CREATE USER %s@%s", (user, hosts[0]))
                    (statement,) = cur.fetchone()
                with target.get_conn().cursor() as cur:   # the server's own DDL for that user, as it printed it
                    cur.execute(statement)
            target.grant_database(user, order.database)
            self.report.add("users_copied")

    # -- 3. switch --------------------------------------------------------------------------------

    def switch(self, order: Order) -> None:
        values = {"to": order.to_id, "from": order.from_id, "site": order.site_id, "db": order.database_id,
                  "path": order.target_path, "id": order.id, "at": self.at}
        with self.conn.transaction():
            if order.site_id is not None:
                self.conn.execute(_SWITCH_SITE, values)
            if order.database_id is not None:
                self.conn.execute(_SWITCH_DATABASE, values)
                self.conn.execute(_SWITCH_USERS, values)
            self.conn.execute(_DONE, values)


def table_counts(hook: HostedMySqlHook, database: str) -> dict[str, int]:
    """Rows per base table of ``database`` (exact ``COUNT(*)``: the check a move must pass)."""
    counts = {}
    with hook.get_conn().cursor() as cur:
        cur.execute("SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s"
                    " AND TABLE_TYPE = 'BASE TABLE' ORDER BY TABLE_NAME", (database,))
        for (table,) in cur.fetchall():
            cur.execute(f"SELECT COUNT(*) FROM {quote_identifier(database)}.{quote_identifier(table, 'table name')}")
            counts[table] = cur.fetchone()[0]
    return counts


def process_transfer_queue(panel_db, interval, params=None, log=None) -> dict:
    """Process transfer queue orders."""
    params = params or {}
    limit = int(params.get("transfer_batch", TRANSFER_BATCH))
    max_attempts = int(params.get("max_attempts", MAX_ATTEMPTS))
    if limit < 1 or max_attempts < 1:
        raise ValueError("transfer_batch and max_attempts must be >= 1")
    budget = float(params.get("run_budget_seconds", RUN_BUDGET_SECONDS))
    deadline = time.monotonic() + budget      # a budget for this run's work, never its clock
    at = interval.end
    report = StepReport().zero("transfers_done", "transfers_busy", "transfers_refused", "transfers_retried",
                               "transfers_paused", "files_copied", "bytes_copied", "tables_copied")
    errors = (DumpFailed, *sftp_errors())
    with panel_db.get_conn() as conn:
        conn.autocommit = True
        mover = _Mover(conn, at, report, log, deadline)
        orders = []
        for row in conn.execute(_OPEN, {"limit": limit}).fetchall():
            if conn.execute("SELECT pg_try_advisory_lock(%s, %s)", (LOCK_SPACE, row[0])).fetchone()[0]:
                orders.append(Order(*row))
            else:
                report.add("transfers_busy")       # another run is on it

        def reason(exc: BaseException) -> str | None:
            if isinstance(exc, (TransferRefused, *errors)):
                return f"{type(exc).__name__}: {first_line(exc)}"
            return backend_error(exc)

        def failed(order: Order, exc: BaseException, why: str) -> None:
            refused = isinstance(exc, TransferRefused)
            report.add("transfers_refused" if refused else "transfers_retried")
            conn.execute(_ATTEMPT_FAILED, {"id": order.id, "error": f"{order.stage}: {why}"[:2000], "max": max_attempts,
                                           "final": refused, "at": at})

        try:
            outcome = for_each(orders, mover.work, report=report, kind="transfer", reason=reason, log=log,
                               what="transfer order", on_failure=failed, everything_failed=HostingServersFailed,
                               stop=mover.spent)
        finally:
            for order in orders:
                conn.execute("SELECT pg_advisory_unlock(%s, %s)", (LOCK_SPACE, order.id))
    summary = report.as_dict()
    summary["failed_transfers"] = outcome.failed
    return summary
