"""BandwidthQuotaWork: traffic of the hosted web sites, from the web servers' IIS W3C logs over SMB.

:func:`sync_bandwidth_quota_usage` reads, per web server with a log share (``hosting_servers``
``log_share_conn_id``, a ``samba`` connection; ``log_folder`` inside it), every
``W3SVC<iis_site_id>/*.log`` of a hosted site, and adds each line's sc-bytes (sent) and cs-bytes
(received) to the site's UTC day in ``site_bandwidth_daily``; then every subscription whose sites
were all read gets a ``bandwidth`` sample (MB, its month to date) at the run's clock, which
QuotaOverUsedWork compares with its quota. The model (and why each rule) is in migration 0025.

Why incremental and how. Logs are large and grow all day, so a run reads each file from where the
last run stopped (``iis_log_files.read_offset``) to its last complete line; a half-written last
line waits for the next run. The day's increment and the new offset are written in one
transaction, conditional on the offset the run started from: a crash loses only the uncommitted
work (read again next time), and two runs reading the same file at once cannot both count it. A
file whose site has a newer log file (names sort by period: ``u_exYYMMDD``), or unchanged for
``COMPLETE_AFTER``, is complete: its last line is counted even without a line end, and it is never
read again. A run starts no file (nor server) after ``RUN_BUDGET_SECONDS``: a backlog (a new server
with a year of logs) is worked off over several runs, each committing what it read.

Why this parser. A web server writes millions of lines a day; the per-line work is the whole cost.
Files are read in ``CHUNK``-sized SMB reads and split into lines; each line is split on blanks and
the fields are picked by the index the ``#Fields`` directive gave (fields in any order, redeclared
midway, kept in the file's row so a resumed read knows them). No regular expression and no
database work per line: a day is validated only when it changes, and the counts go to the
database once per batch of files (``FLUSH_BYTES``). A malformed line (wrong number of fields, a
byte count that is not a number, a bad date) is counted and skipped, named with its file and line
number in the summary (bounded).
"""

from __future__ import annotations

import logging
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone

from panelflow.step import StepReport, first_line, for_each

CHUNK = 4 * 1024 * 1024               # one SMB read (Samba and Windows allow 8 MiB)
FLUSH_BYTES = 256 * 1024 * 1024       # commit the counts (and offsets) at least this often
FLUSH_FILES = 500
RUN_BUDGET_SECONDS = 20 * 60         # the thread's timeout is 25 min: start no file after 20 (the rest: next run)
COMPLETE_AFTER = timedelta(days=1)    # a log file unchanged this long is not written any more
MIB = 1024 * 1024
RESOURCE = "bandwidth"

_SITE_FOLDER = re.compile(r"W3SVC(\d+)", re.IGNORECASE)
_DAY = re.compile(rb"\d{4}-\d{2}-\d{2}")
_DIRECTORY = 0x10                     # FILE_ATTRIBUTE_DIRECTORY


class W3CCounter:
    """Counts W3C extended log lines into bytes sent/received and requests per day (a file's days).

    Fed the lines of one file in order (:meth:`feed`); the layout is the ``#Fields`` directive in
    effect (given at construction when resuming mid-file). ``line_base`` is the number of lines of
    the file before the first line fed, so a malformed line is named by its line number in the file.
    """

    def __init__(self, fields: str | None, *, line_base: int = 0, label: str = "", report: StepReport | None = None):
        self.days: dict[bytes, list[int]] = {}   # day (b"YYYY-MM-DD") -> [sent, received, requests]
        self.requests = 0
        self.malformed = 0
        self.other = 0                            # directives and blank lines
        self.line_base = line_base
        self.label = label
        self.report = report
        self._layout(fields.split() if fields else None)

    @property
    def lines(self) -> int:
        return self.requests + self.malformed + self.other

    def _layout(self, names: list | None) -> None:
        """Take a ``#Fields`` list (``None``: none seen yet): where date, sc-bytes and cs-bytes are."""
        self._idx = (-1, 0, 0, 0)            # every data line is malformed until a usable directive
        self.fields = None
        if names is None:
            return
        names = [n.decode() if isinstance(n, bytes) else n for n in names]
        self.fields = " ".join(names)
        if {"date", "sc-bytes", "cs-bytes"} <= set(names):
            self._idx = (len(names), names.index("date"), names.index("sc-bytes"), names.index("cs-bytes"))

    def _bad(self, index: int, why: str, detail: str = "") -> None:
        """One malformed line: the reason stays one of a few fixed texts (the summary counts per
        reason), the detail goes with the line's file and number (kept for the first few only)."""
        self.malformed += 1
        if self.report is not None:
            self.report.skip(why, f"{self.label} line {self.line_base + index + 1}{detail}")

    def feed(self, lines: list[bytes]) -> None:
        """Count ``lines`` (complete lines, line ends stripped or not)."""
        nf, i_day, i_sent, i_recv = self._idx
        days = self.days
        day = None
        acc = None
        sent = recv = n = 0
        for line in lines:
            p = line.split()
            if len(p) != nf or p[0][0] == 35:        # 35: "#", a directive
                if acc is not None:        # settle the running day before anything changes
                    acc[0] += sent
                    acc[1] += recv
                    acc[2] += n
                    self.requests += n
                    sent = recv = n = 0
                if not p:
                    self.other += 1
                elif p[0][0] == 35:
                    self.other += 1
                    if p[0] == b"#Fields:":
                        self._layout(p[1:])
                        nf, i_day, i_sent, i_recv = self._idx
                elif nf < 0:
                    self._bad(self.lines, "no #Fields directive with date, sc-bytes and cs-bytes before the line")
                else:
                    self._bad(self.lines, "wrong number of fields", f" ({len(p)}, #Fields declares {nf})")
                continue
            d = p[i_day]
            if d != day:
                if acc is not None:
                    acc[0] += sent
                    acc[1] += recv
                    acc[2] += n
                    self.requests += n
                    sent = recv = n = 0
                if not _valid_day(d):
                    self._bad(self.lines, "bad date", f" ({d[:20].decode(errors='replace')!r})")
                    day = acc = None
                    continue
                day = d
                acc = days.get(d)
                if acc is None:
                    acc = days[d] = [0, 0, 0]
            try:
                a = int(p[i_sent])
                b = int(p[i_recv])
            except ValueError:
                a = b = -1
            if a < 0 or b < 0:
                self._bad(self.lines + n, "sc-bytes or cs-bytes is not a byte count")
                continue
            sent += a
            recv += b
            n += 1
        if acc is not None:
            acc[0] += sent
            acc[1] += recv
            acc[2] += n
            self.requests += n


def _valid_day(d: bytes) -> bool:
    if not _DAY.fullmatch(d):
        return False
    try:
        date.fromisoformat(d.decode())
    except ValueError:
        return False
    return True


# --- the panel DB side -------------------------------------------------------------------------------

_SERVERS = """
SELECT id, name, log_share_conn_id, log_folder FROM hosting_servers
WHERE role = 'web' AND engine = 'iis' AND enabled AND log_share_conn_id IS NOT NULL
ORDER BY id
"""

_SITES = "SELECT iis_site_id, id FROM hosted_sites WHERE web_server_id = %s AND iis_site_id IS NOT NULL"

_KNOWN = """
SELECT path, id, read_offset, size_seen, fields, lines_read, completed_at IS NOT NULL FROM iis_log_files
WHERE server_id = %(server)s AND path = ANY(%(paths)s)
"""

_NEW_FILES = """
INSERT INTO iis_log_files (server_id, site_id, path, first_read_at, last_read_at)
SELECT %(server)s, u.site_id, u.path, %(clock)s, %(clock)s
FROM unnest(%(sites)s::bigint[], %(paths)s::text[]) AS u(site_id, path)
ORDER BY u.path
ON CONFLICT (server_id, path) DO NOTHING
"""

# The offsets move only from where this run started: a row another run moved is not matched.
_ADVANCE = """
UPDATE iis_log_files f
SET read_offset = u.new_offset, fields = u.fields, size_seen = u.size, modified_at = u.modified,
    lines_read = f.lines_read + u.lines, malformed_lines = f.malformed_lines + u.malformed,
    last_read_at = %(clock)s, completed_at = CASE WHEN u.complete THEN %(clock)s END
FROM unnest(%(ids)s::bigint[], %(old)s::bigint[], %(new)s::bigint[], %(fields)s::text[], %(sizes)s::bigint[],
            %(mtimes)s::timestamptz[], %(lines)s::bigint[], %(malformed)s::bigint[], %(complete)s::boolean[])
     AS u(id, old_offset, new_offset, fields, size, modified, lines, malformed, complete)
WHERE f.id = u.id AND f.read_offset = u.old_offset AND f.completed_at IS NULL
"""

_ADD_DAYS = """
INSERT INTO site_bandwidth_daily AS d (site_id, day, bytes_sent, bytes_received, requests, updated_at)
SELECT u.site_id, u.day, u.sent, u.received, u.requests, %(clock)s
FROM unnest(%(sites)s::bigint[], %(days)s::date[], %(sent)s::bigint[], %(received)s::bigint[],
            %(requests)s::bigint[]) AS u(site_id, day, sent, received, requests)
ORDER BY u.site_id, u.day
ON CONFLICT (site_id, day) DO UPDATE
SET bytes_sent = d.bytes_sent + EXCLUDED.bytes_sent, bytes_received = d.bytes_received + EXCLUDED.bytes_received,
    requests = d.requests + EXCLUDED.requests, updated_at = EXCLUDED.updated_at
"""

# Month to date (UTC, as the logs) per subscription with a live site on a server read by this run,
# if every live site of it was read (a deleted site's traffic of the month still counts).
_SAMPLES = """
WITH measured AS (
    SELECT subscription_id,
           bool_and(web_server_id = ANY(%(answered)s) OR status = 'deleted' OR iis_site_id IS NULL) AS complete
    FROM hosted_sites GROUP BY subscription_id
    HAVING bool_or(web_server_id = ANY(%(answered)s) AND status <> 'deleted')
), written AS (
    INSERT INTO resource_usage_samples (subscription_id, resource, sampled_at, used)
    SELECT m.subscription_id, %(resource)s, %(clock)s,
           round(coalesce(sum(d.bytes_sent + d.bytes_received), 0) / %(mib)s::numeric, 3)
    FROM measured m
    JOIN hosted_sites s ON s.subscription_id = m.subscription_id
    LEFT JOIN site_bandwidth_daily d ON d.site_id = s.id AND d.day BETWEEN %(month)s AND %(day)s
    WHERE m.complete
    GROUP BY m.subscription_id
    ORDER BY m.subscription_id
    ON CONFLICT (subscription_id, resource, sampled_at) DO UPDATE SET used = EXCLUDED.used
    RETURNING 1
)
SELECT (SELECT count(*) FROM written), (SELECT count(*) FROM measured WHERE NOT complete)
"""


@dataclass
class _Server:
    id: int
    name: str
    conn_id: str
    folder: str


@dataclass
class _File:
    """A log file to read this run: where it stands and what was listed."""
    id: int
    site_id: int
    path: str
    offset: int
    fields: str | None
    lines_before: int
    size: int
    modified: datetime
    complete: bool


@dataclass
class _Batch:
    """Counts read but not committed yet: the files' new positions and the site-days' increments."""
    files: list = field(default_factory=list)       # (file, new_offset, counter)
    days: dict = field(default_factory=dict)        # (site_id, b"day") -> [sent, received, requests]
    bytes: int = 0


class _MovedElsewhere(Exception):
    """Another run advanced a file of this batch meanwhile: its counts stand, ours are dropped."""


def _unreachable(exc: BaseException) -> str | None:
    """The log share's errors (connection missing, refused, logon, share or folder missing, I/O)."""
    from airflow.exceptions import AirflowNotFoundException
    from smbprotocol.exceptions import SMBException

    if isinstance(exc, (SMBException, OSError, AirflowNotFoundException)):
        return f"{type(exc).__name__}: {first_line(exc)}"
    if isinstance(exc, ValueError) and str(exc).startswith("Failed to connect"):   # smbprotocol's refused
        return first_line(exc)
    return None


@contextmanager
def _smb_log_quiet(log):
    """smbprotocol logs every SMB message at INFO (several lines per 4 MiB read, per directory
    listing): in a task log that is thousands of lines a run, and formatting them costs more than the
    reading. They are kept only when the thread logs at DEBUG (Threads Manager "Enable Logging")."""
    if log is not None and log.isEnabledFor(logging.DEBUG):
        yield
        return
    loggers = [logging.getLogger(name) for name in ("smbprotocol", "smbclient")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(lg.getEffectiveLevel(), logging.WARNING))
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def _list_logs(hook, folder: str, sites: dict[int, int], report: StepReport) -> list[tuple[int, str, int, datetime]]:
    """``(site_id, path, size, modified)`` of every ``*.log`` in the site folders of known sites."""
    found = []
    for entry in hook.scandir(folder):
        m = _SITE_FOLDER.fullmatch(entry.name)
        if not m or not entry.smb_info.file_attributes & _DIRECTORY:
            continue
        site_id = sites.get(int(m.group(1)))
        if site_id is None:
            report.add("log_folders_without_site")
            continue
        report.add("log_folders")
        for log in hook.scandir(f"{folder}/{entry.name}", search_pattern="*.log"):
            info = log.smb_info
            if info.file_attributes & _DIRECTORY:
                continue
            found.append((site_id, f"{folder}/{entry.name}/{log.name}", info.end_of_file, _utc(info.last_write_time)))
    return found


def _to_read(conn, server: _Server, listed, clock, report: StepReport) -> list[_File]:
    """The listed files with something to count, oldest first; new ones get their row (offset 0)."""
    paths = [p for _, p, _, _ in listed]
    known = {r[0]: r[1:] for r in conn.execute(_KNOWN, {"server": server.id, "paths": paths}).fetchall()}
    new = [x for x in listed if x[1] not in known]
    if new:
        with conn.transaction():
            conn.execute(_NEW_FILES, {"server": server.id, "clock": clock, "sites": [x[0] for x in new],
                                      "paths": [x[1] for x in new]})
        known = {r[0]: r[1:] for r in conn.execute(_KNOWN, {"server": server.id, "paths": paths}).fetchall()}
    newest: dict[int, str] = {}
    for site_id, path, _, _ in listed:
        newest[site_id] = max(newest.get(site_id, path), path)
    files = []
    for site_id, path, size, modified in sorted(listed, key=lambda x: x[1]):
        file_id, offset, size_seen, fields, lines, completed = known[path]
        if completed:
            continue
        complete = path != newest[site_id] or modified <= clock - COMPLETE_AFTER
        if size < offset:
            report.skip("log file is shorter than what was already counted: left as counted",
                        f"{server.name} {path}")
            continue
        if not complete and (size == offset or size == size_seen):
            continue                               # nothing written since: a half line stays as it was
        files.append(_File(file_id, site_id, path, offset, fields, lines, size, modified, complete))
    return files


def _read_file(hook, server: _Server, f: _File, batch: _Batch, report: StepReport) -> None:
    """Count ``f`` from its offset to its last complete line (to its end when complete) into the batch."""
    counter = W3CCounter(f.fields, line_base=f.lines_before, label=f"{server.name} {f.path}", report=report)
    pos, carry = f.offset, b""
    # share_access: IIS keeps the current log open for writing; reading must not lock it out.
    with hook.open_file(f.path, mode="rb", share_access="rw") as fh:
        fh.seek(pos)
        while pos < f.size:
            chunk = fh.read(min(CHUNK, f.size - pos))
            if not chunk:
                break
            if pos == 0 and chunk.startswith(b"\xef\xbb\xbf"):
                chunk = b"   " + chunk[3:]          # a UTF-8 byte order mark: blanks keep the offsets
            pos += len(chunk)
            lines = (carry + chunk).split(b"\n") if carry else chunk.split(b"\n")
            carry = lines.pop()
            counter.feed(lines)
    end = pos - len(carry)
    if f.complete and carry.strip():
        counter.feed([carry])                      # the last line of a finished file needs no line end
        end = pos
    elif f.complete:
        end = pos
    batch.files.append((f, end, counter))
    for day, (sent, received, requests) in counter.days.items():
        acc = batch.days.setdefault((f.site_id, day), [0, 0, 0])
        acc[0] += sent
        acc[1] += received
        acc[2] += requests
    batch.bytes += pos - f.offset


def _flush(conn, batch: _Batch, clock, report: StepReport) -> None:
    """Commit the batch: the files' offsets and the site-days' increments in one transaction."""
    if not batch.files:
        return
    files = batch.files
    days = [(site, date.fromisoformat(d.decode()), *v) for (site, d), v in batch.days.items() if v[2]]
    with conn.transaction():
        moved = conn.execute(_ADVANCE, {
            "clock": clock, "ids": [f.id for f, _, _ in files], "old": [f.offset for f, _, _ in files],
            "new": [end for _, end, _ in files], "fields": [c.fields for _, _, c in files],
            "sizes": [f.size for f, _, _ in files], "mtimes": [f.modified for f, _, _ in files],
            "lines": [c.lines for _, _, c in files], "malformed": [c.malformed for _, _, c in files],
            "complete": [f.complete for f, _, _ in files]}).rowcount
        if moved != len(files):
            raise _MovedElsewhere(f"{len(files) - moved} of {len(files)} files of the batch")
        if days:
            conn.execute(_ADD_DAYS, {"clock": clock, "sites": [d[0] for d in days], "days": [d[1] for d in days],
                                     "sent": [d[2] for d in days], "received": [d[3] for d in days],
                                     "requests": [d[4] for d in days]})
    report.add("files_read", len(files))
    report.add("files_completed", sum(1 for f, _, _ in files if f.complete))
    report.add("lines_counted", sum(c.requests for _, _, c in files))
    report.add("lines_malformed", sum(c.malformed for _, _, c in files))
    report.add("site_days_updated", len(days))
    report.add("bytes_read", batch.bytes)
    batch.files, batch.days, batch.bytes = [], {}, 0


def _sync_server(conn, server: _Server, clock, report: StepReport, spent) -> None:
    from airflow.providers.samba.hooks.samba import SambaHook
    from smbprotocol.exceptions import SMBOSError

    sites = dict(conn.execute(_SITES, (server.id,)).fetchall())
    with SambaHook(samba_conn_id=server.conn_id) as hook:
        listed = _list_logs(hook, server.folder, sites, report)
        report.add("log_files_listed", len(listed))
        batch = _Batch()
        files = _to_read(conn, server, listed, clock, report)
        for i, f in enumerate(files):
            if spent():
                report.add("files_deferred", len(files) - i)
                break
            try:
                _read_file(hook, server, f, batch, report)
            except SMBOSError as exc:             # gone since the listing (log clean-up) or locked
                report.skip("log file not readable (removed or locked since the listing)",
                            f"{server.name} {f.path} ({first_line(exc)})")
                continue
            if batch.bytes >= FLUSH_BYTES or len(batch.files) >= FLUSH_FILES:
                _flush(conn, batch, clock, report)
        _flush(conn, batch, clock, report)


def sync_bandwidth_quota_usage(panel_db, interval, log=None) -> dict:
    """Sync Hostmatic websites bandwidth quota usage: count the new lines of the web servers' IIS
    logs into each site's daily traffic, then sample each subscription's month-to-date traffic."""
    clock = interval.end
    deadline = time.monotonic() + RUN_BUDGET_SECONDS   # bounds the run's length, never what it counts

    def spent() -> bool:
        return time.monotonic() > deadline

    report = StepReport().zero("log_files_listed", "files_read", "files_completed", "lines_counted",
                               "lines_malformed", "site_days_updated", "bytes_read", "samples_written")
    with panel_db.get_conn() as conn:
        conn.autocommit = True   # each batch commits in its own transaction
        servers = [_Server(*r) for r in conn.execute(_SERVERS).fetchall()]
        for s in servers:
            s.folder = s.folder.replace("\\", "/").strip("/")

        def work(server: _Server) -> None:
            try:
                _sync_server(conn, server, clock, report, spent)
            except _MovedElsewhere as exc:
                report.skip("log files advanced by another run meanwhile: this run's counts for them were dropped",
                            f"web_server {server.name} ({exc})")

        with _smb_log_quiet(log):
            outcome = for_each(servers, work, report=report, kind="web_server", what="web server log share",
                               reason=_unreachable, log=log, stop=spent)
        written, unmeasured = 0, 0
        if outcome.answered:
            day = clock.astimezone(timezone.utc).date()
            with conn.transaction():
                written, unmeasured = conn.execute(_SAMPLES, {
                    "answered": [s.id for s in outcome.answered], "resource": RESOURCE, "clock": clock,
                    "mib": MIB, "month": day.replace(day=1), "day": day}).fetchone()
    report.add("samples_written", written)
    report.add("subscriptions_not_measured", unmeasured)
    summary = {"clock": clock.isoformat(), **report.as_dict()}
    if not servers:
        summary["note"] = "no web server has an IIS log share configured (hosting_servers.log_share_conn_id)"
    return summary
