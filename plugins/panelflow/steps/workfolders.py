r"""WorkfolderSyncWork: Work Folders storage used per user and sync share, as quota usage samples.

:func:`sync_workfolder_usage` asks every file server that has Work Folders users in the panel
(``workfolder_users``, written by the panel; ``hosting_servers`` role ``file``, engine ``windows``)
over PowerShell remoting for its sync shares (``Get-SyncShare``) and, share by share, for each
user's folder size and devices (``include/powershell/workfolders/get_user_usage.ps1``:
the user folder under the share's path, ``Get-SyncUserStatus``). Each user gets a
``workfolder_usage`` row keyed by the run's clock (a rerun replaces its own row), and each
subscription whose every Work Folders user was measured gets a ``workfolders_storage`` sample (MB)
that QuotaOverUsedWork compares with its quota. The model is in migration 0025.

Why the panel's user list and not the share's: ``Get-SyncUserStatus`` answers only for a named user
(``-User DOMAIN\alias -SyncShare``), and the subscription a user's storage counts against is the
panel's knowledge, not the server's. The user folder's name follows the share's ``UserFolderName``
(``%username%``: the alias; ``[user]@[domain]``: the user principal name), derived here and sent as
a parameter, so no value is ever part of script text. A subscription with a user not measured
(server down, share gone, no answer) gets no sample: a partial sum would under-report usage and
could close an over-use episode on a guess.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from datetime import datetime

from pydantic import BaseModel, Field, field_validator

from panelflow.hooks.powershell import PowerShellScriptError, parse_records, powershell_session, ps_datetime
from panelflow.step import StepReport, first_line, for_each

RESOURCE = "workfolders_storage"
MIB = 1024 * 1024
USERS_PER_CALL = 100          # one script call measures at most this many folders (bounded call time)
_FOLDER = re.compile(r"^[^\\/:*?\"<>|\x00-\x1f]+$")


class ShareRecord(BaseModel):
    Name: str
    Path: str
    UserFolderName: str | None = None
    Enabled: bool


class UsageRecord(BaseModel):
    User: str
    Folder: str
    FolderFound: bool
    UsedBytes: int = Field(ge=0)
    FileCount: int = Field(ge=0)
    Devices: int = Field(ge=0)
    LastSuccessfulSync: datetime | None = None

    _when = field_validator("LastSuccessfulSync", mode="before")(lambda v: ps_datetime(v))


_SERVERS = """
SELECT h.id, h.name, h.conn_id FROM hosting_servers h
WHERE h.role = 'file' AND h.engine = 'windows' AND h.enabled
  AND EXISTS (SELECT 1 FROM workfolder_users u WHERE u.file_server_id = h.id AND u.removed_at IS NULL)
ORDER BY h.id
"""

_USERS = """
SELECT id, share_name, user_name, user_principal_name FROM workfolder_users
WHERE file_server_id = %s AND removed_at IS NULL ORDER BY lower(share_name), id
"""

_SHARES = """
WITH seen AS (
    INSERT INTO workfolder_shares AS w (file_server_id, name, path, user_folder_name, enabled, seen_at)
    SELECT %(server)s, x.name, x.path, x.user_folder_name, x.enabled, %(clock)s
    FROM jsonb_to_recordset(%(rows)s::jsonb) AS x(name text, path text, user_folder_name text, enabled boolean)
    ON CONFLICT (file_server_id, name) DO UPDATE
    SET path = EXCLUDED.path, user_folder_name = EXCLUDED.user_folder_name, enabled = EXCLUDED.enabled,
        seen_at = EXCLUDED.seen_at, missing_since = NULL
    WHERE w.seen_at <= EXCLUDED.seen_at
    RETURNING name
)
UPDATE workfolder_shares SET missing_since = %(clock)s
WHERE file_server_id = %(server)s AND missing_since IS NULL AND seen_at < %(clock)s
  AND NOT (name = ANY(%(names)s))
"""

_USAGE = """
INSERT INTO workfolder_usage AS w (workfolder_user_id, sampled_at, used_bytes, file_count, folder_found, devices,
                                   last_successful_sync)
SELECT x.id, %(clock)s, x.used_bytes, x.file_count, x.folder_found, x.devices, x.last_successful_sync
FROM jsonb_to_recordset(%(rows)s::jsonb) AS x(id bigint, used_bytes bigint, file_count bigint, folder_found boolean,
                                              devices integer, last_successful_sync timestamptz)
ORDER BY x.id
ON CONFLICT (workfolder_user_id, sampled_at) DO UPDATE
SET used_bytes = EXCLUDED.used_bytes, file_count = EXCLUDED.file_count, folder_found = EXCLUDED.folder_found,
    devices = EXCLUDED.devices, last_successful_sync = EXCLUDED.last_successful_sync
"""

# Per subscription with Work Folders users: the sum, if every one of them was measured by this run.
_SAMPLES = """
WITH per_sub AS (
    SELECT u.subscription_id, count(*) AS users, count(w.workfolder_user_id) AS measured,
           coalesce(sum(w.used_bytes), 0) AS used_bytes
    FROM workfolder_users u
    LEFT JOIN workfolder_usage w ON w.workfolder_user_id = u.id AND w.sampled_at = %(clock)s
    WHERE u.removed_at IS NULL
    GROUP BY u.subscription_id
), written AS (
    INSERT INTO resource_usage_samples (subscription_id, resource, sampled_at, used)
    SELECT subscription_id, %(resource)s, %(clock)s, round(used_bytes / %(mib)s::numeric, 3)
    FROM per_sub WHERE measured = users
    ORDER BY subscription_id
    ON CONFLICT (subscription_id, resource, sampled_at) DO UPDATE SET used = EXCLUDED.used
    RETURNING 1
)
SELECT (SELECT count(*) FROM written), (SELECT count(*) FROM per_sub WHERE measured < users)
"""


def user_folder(user_folder_name: str | None, user_name: str, upn: str | None) -> str | None:
    """The name of a user's folder in a sync share, from the share's ``UserFolderName``; ``None``
    when it cannot be derived (an unknown naming, no UPN for ``[user]@[domain]``, a name that would
    leave the share's folder)."""
    naming = (user_folder_name or "%username%").strip().lower()
    if naming == "%username%":
        folder = user_name.split("\\", 1)[-1]
    elif naming == "[user]@[domain]":
        folder = upn
    else:
        return None
    if not folder or folder in (".", "..") or not _FOLDER.match(folder):
        return None
    return folder


def _sync_server(conn, hook, server, clock, report: StepReport) -> None:
    server_id, name, _ = server
    shares = {s.Name.lower(): s for s in parse_records(ShareRecord, hook.run_script("workfolders/get_sync_shares"),
                                                       report, f"{name} sync share")}
    report.add("shares", len(shares))
    with conn.transaction():
        conn.execute(_SHARES, {"server": server_id, "clock": clock, "names": [s.Name for s in shares.values()],
                               "rows": json.dumps([{"name": s.Name, "path": s.Path, "enabled": s.Enabled,
                                                    "user_folder_name": s.UserFolderName or "%username%"}
                                                   for s in shares.values()])})
    by_share: dict[str, list] = defaultdict(list)
    for row in conn.execute(_USERS, (server_id,)).fetchall():
        by_share[row[1].lower()].append(row)
    for key, users in by_share.items():
        share = shares.get(key)
        if share is None:
            report.add("users_not_measured", len(users))
            report.skip("sync share not on the server (Get-SyncShare)", f"{name} share {users[0][1]}")
            continue
        asked = []
        for user_id, _, user_name, upn in users:
            folder = user_folder(share.UserFolderName, user_name, upn)
            if folder is None:
                report.add("users_not_measured")
                report.skip(f"no user folder name for UserFolderName {share.UserFolderName!r}",
                            f"{name} {share.Name} {user_name}")
                continue
            asked.append((user_id, user_name, folder))
        for start in range(0, len(asked), USERS_PER_CALL):
            batch = asked[start:start + USERS_PER_CALL]
            try:
                _measure(conn, hook, name, share, batch, clock, report)
            except PowerShellScriptError as exc:   # this share refused (removed meanwhile …): the others go on
                report.add("users_not_measured", len(batch))
                report.skip(f"get_user_usage failed: {first_line(exc)}", f"{name} share {share.Name}")


def _measure(conn, hook, server_name: str, share: ShareRecord, batch, clock, report: StepReport) -> None:
    rows = hook.run_script("workfolders/get_user_usage", {"SyncShare": share.Name, "User": [u for _, u, _ in batch],
                                                          "Folder": [f for _, _, f in batch]})
    answers = {r.User.lower(): r for r in parse_records(UsageRecord, rows, report, f"{server_name} {share.Name} user")}
    written = []
    for user_id, user_name, _ in batch:
        r = answers.get(user_name.lower())
        if r is None:
            report.add("users_not_measured")
            report.skip("no usage in the answer", f"{server_name} {share.Name} {user_name}")
            continue
        written.append({"id": user_id, "used_bytes": r.UsedBytes, "file_count": r.FileCount,
                        "folder_found": r.FolderFound, "devices": r.Devices,
                        "last_successful_sync": r.LastSuccessfulSync.isoformat() if r.LastSuccessfulSync else None})
        report.add("users_without_folder", 0 if r.FolderFound else 1)
    if written:
        with conn.transaction():
            conn.execute(_USAGE, {"clock": clock, "rows": json.dumps(written)})
    report.add("users_measured", len(written))


def sync_workfolder_usage(panel_db, interval, log=None) -> dict:
    """Sync Workfolder hosting data. E.g. Storage used: per user and sync share the storage used
    (and devices syncing), then a Work Folders storage sample per subscription."""
    from airflow.exceptions import AirflowException

    from panelflow.hooks.powershell import PowerShellError

    clock = interval.end
    report = StepReport().zero("shares", "users_measured", "users_not_measured", "users_without_folder",
                               "samples_written", "subscriptions_not_measured")
    with panel_db.get_conn() as conn:
        conn.autocommit = True   # each share's rows commit on their own
        servers = conn.execute(_SERVERS).fetchall()

        def work(server) -> None:
            with powershell_session(server[2], log) as hook:
                _sync_server(conn, hook, server, clock, report)

        outcome = for_each(servers, work, report=report, kind="file_server", name=lambda s: s[1],
                           expected=(PowerShellError, AirflowException), log=log, what="Work Folders server")
        written = unmeasured = 0
        if outcome.answered:
            with conn.transaction():
                written, unmeasured = conn.execute(_SAMPLES, {"clock": clock, "resource": RESOURCE,
                                                              "mib": MIB}).fetchone()
    report.add("samples_written", written)
    report.add("subscriptions_not_measured", unmeasured)
    summary = {"clock": clock.isoformat(), **report.as_dict()}
    if not servers:
        summary["note"] = "no Work Folders users on any enabled file server (workfolder_users)"
    return summary
