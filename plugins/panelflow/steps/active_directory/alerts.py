"""AutoAddUsersInSecurityGroupWork step 3: the conditions an operator must see, as ``system_alerts``.

One open row per condition and object, kept open (``last_seen_at``) while the condition holds and
resolved by the first run that no longer finds it:

- ``ad_directory_unreachable`` (critical): the directory could not be searched this run; its other
  alerts are then left as they were (unknown is not resolved);
- ``ad_account_locked`` (warning): an account of the managed subtree locked out
  (``msDS-User-Account-Control-Computed`` LOCKOUT, i.e. still inside the lockout duration);
- ``ad_password_expired`` (info): an enabled account whose password expired by the run's end
  (``msDS-UserPasswordExpiryTimeComputed`` ≤ ``interval.end``; never-expiring passwords and "must
  change at next logon" are not expiries);
- ``group_action_failed`` (warning): a group-action job of any backend that failed within the last
  ``alert_failed_job_hours`` (24) — resolved when it is re-queued or ages out.

The run's ``interval.end`` is the alerts' clock, so a rerun of an interval writes the same rows. A
disabled directory's AD alerts are resolved.
"""

from __future__ import annotations

import json
from datetime import timedelta

from panelflow.hooks.active_directory import (
    UF_ACCOUNTDISABLE,
    UF_DONT_EXPIRE_PASSWD,
    UF_LOCKOUT,
    USER_FILTER,
    datetime_to_filetime,
    filetime_to_datetime,
)
from panelflow.step import StepReport

from ._backend import DirectoriesFailed, Directory, copy, each_directory

AD_ALERT_TYPES = ("ad_account_locked", "ad_password_expired")
ALERT_SEVERITY = {"ad_directory_unreachable": "critical", "ad_account_locked": "warning",
                  "ad_password_expired": "info", "group_action_failed": "warning"}

_ALERTS_TEMP = ("CREATE TEMP TABLE tmp_alerts (alert_type text, object_key text, directory_id bigint, severity text,"
                " title text, detail jsonb) ON COMMIT DROP",
                "CREATE TEMP TABLE tmp_alert_scope (alert_type text, directory_id bigint) ON COMMIT DROP")

_ALERTS_OPEN = """
INSERT INTO system_alerts (alert_type, object_key, directory_id, severity, title, detail, opened_at, last_seen_at)
SELECT alert_type, object_key, directory_id, severity, title, detail, %(at)s, %(at)s FROM tmp_alerts
ON CONFLICT (alert_type, object_key) WHERE resolved_at IS NULL DO UPDATE
SET last_seen_at = greatest(system_alerts.last_seen_at, EXCLUDED.last_seen_at), title = EXCLUDED.title,
    detail = EXCLUDED.detail, severity = EXCLUDED.severity
RETURNING (xmax = 0) AS opened
"""

_ALERTS_RESOLVE = """
UPDATE system_alerts a SET resolved_at = %(at)s
WHERE a.resolved_at IS NULL AND a.opened_at <= %(at)s
  AND EXISTS (SELECT 1 FROM tmp_alert_scope s
              WHERE s.alert_type = a.alert_type AND s.directory_id IS NOT DISTINCT FROM a.directory_id)
  AND NOT EXISTS (SELECT 1 FROM tmp_alerts t WHERE t.alert_type = a.alert_type AND t.object_key = a.object_key)
"""

_FAILED_JOBS = r"""
INSERT INTO tmp_alerts (alert_type, object_key, directory_id, severity, title, detail)
SELECT 'group_action_failed', 'job:' || id, NULL, %(severity)s,
       format('Group action %%s (%%s %%s) failed: %%s', id, backend, action,
              left(split_part(coalesce(error, 'no error recorded'), E'
', 1), 300)),
       jsonb_build_object('job_id', id, 'backend', backend, 'action', action, 'error', error,
                          'failed_at', coalesce(finished_at, created_at))
FROM group_action_jobs
WHERE status = 'failed' AND coalesce(finished_at, created_at) > %(since)s AND coalesce(finished_at, created_at) <= %(at)s
"""


def sync_system_alerts(panel_db, interval, params=None, log=None) -> dict:
    """Step 3 of AutoAddUsersInSecurityGroupWork: open, keep and resolve ``system_alerts`` (see the
    module's doc). Params: ``alert_failed_job_hours`` (24)."""
    params = params or {}
    at = interval.end
    since = at - timedelta(hours=float(params.get("alert_failed_job_hours", 24)))
    report = StepReport()
    for key in ("alerts_current", "opened", "resolved"):
        report.add(key, 0)
    current: list[tuple] = []
    scope: list[tuple] = []
    now_ft = datetime_to_filetime(at)
    attrs = ("objectGUID", "sAMAccountName", "userPrincipalName", "userAccountControl", "lockoutTime",
             "msDS-User-Account-Control-Computed", "msDS-UserPasswordExpiryTimeComputed", "pwdLastSet")

    def work(conn, directory: Directory, hook) -> None:
        found = []
        for entry in hook.search(directory.base_dn, USER_FILTER, attrs):
            try:
                guid = entry.guid()
                name = entry.text("userPrincipalName") or entry.text("sAMAccountName") or entry.dn
                uac = entry.int("userAccountControl") or 0
                computed = entry.int("msDS-User-Account-Control-Computed") or 0
                expiry = entry.int("msDS-UserPasswordExpiryTimeComputed")
                pwd_last_set = entry.int("pwdLastSet")
                locked_at = entry.filetime("lockoutTime")
            except ValueError as exc:
                report.skip(str(exc), entry.dn)
                continue
            key = f"directory:{directory.id}/user:{guid}"
            if computed & UF_LOCKOUT:
                found.append(("ad_account_locked", key, directory.id, f"Account {name} is locked out",
                              {"dn": entry.dn, "object_guid": str(guid),
                               "locked_at": locked_at.isoformat() if locked_at else None}))
            enabled = not uac & UF_ACCOUNTDISABLE
            expires = not uac & UF_DONT_EXPIRE_PASSWD
            if (enabled and expires and pwd_last_set and expiry and 0 < expiry <= now_ft):
                expired_at = filetime_to_datetime(expiry)
                found.append(("ad_password_expired", key, directory.id,
                              f"The password of {name} expired {expired_at:%Y-%m-%d %H:%M} UTC",
                              {"dn": entry.dn, "object_guid": str(guid), "expired_at": expired_at.isoformat()}))
        current.extend(found)
        scope.extend((t, directory.id) for t in (*AD_ALERT_TYPES, "ad_directory_unreachable"))

    def unreachable(conn, directory: Directory, exc: Exception) -> None:
        text = str(exc).splitlines()[0][:500] if str(exc) else type(exc).__name__
        current.append(("ad_directory_unreachable", f"directory:{directory.id}", directory.id,
                        f"Directory {directory.name} cannot be reached", {"error": text}))
        scope.append(("ad_directory_unreachable", directory.id))

    every_failed = None
    try:
        each_directory(panel_db, report, log, work, on_failure=unreachable)
    except DirectoriesFailed as exc:
        every_failed = exc            # the alerts are still written; the step fails after

    with panel_db.get_conn() as conn:
        # disabled directories: nothing of theirs is watched any more
        for (directory_id,) in conn.execute("SELECT id FROM ad_directories WHERE NOT enabled").fetchall():
            scope.extend((t, directory_id) for t in (*AD_ALERT_TYPES, "ad_directory_unreachable"))
        scope.append(("group_action_failed", None))
        with conn.transaction():
            for statement in _ALERTS_TEMP:
                conn.execute(statement)
            copy(conn, "tmp_alerts", ("alert_type", "object_key", "directory_id", "severity", "title", "detail"),
                 ((t, k, d, ALERT_SEVERITY[t], title, json.dumps(detail, sort_keys=True))
                  for t, k, d, title, detail in current))
            conn.execute(_FAILED_JOBS, {"since": since, "at": at, "severity": ALERT_SEVERITY["group_action_failed"]})
            copy(conn, "tmp_alert_scope", ("alert_type", "directory_id"), scope)
            counts = conn.execute("SELECT alert_type, count(*) FROM tmp_alerts GROUP BY 1 ORDER BY 1").fetchall()
            opened = sum(1 for (o,) in conn.execute(_ALERTS_OPEN, {"at": at}) if o)
            resolved = conn.execute(_ALERTS_RESOLVE, {"at": at}).rowcount
        report.add("alerts_current", sum(n for _, n in counts))
        report.add("opened", opened)
        report.add("resolved", resolved)
        for alert_type, n in counts:
            report.add(f"current:{alert_type}", n)
    if every_failed is not None:
        raise every_failed
    return report.as_dict()
