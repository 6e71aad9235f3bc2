"""AutoAddUsersInSecurityGroupWork step 2: a user's CN follows its UPN.

When a UPN has changed since the last run (``ad_user_cn_upn`` remembers the UPN each user had; the
first sight of a user is only remembered), the user is renamed (modify DN, same OU) to ``CN=<the new
UPN's local part>`` — the same rule create_user names new accounts by. Another object already
holding that CN in the OU is a collision: reported, the user skipped (and tried again next run). The
panel's ``ad_users.cn``/``dn`` follow the rename.
"""

from __future__ import annotations

from panelflow.hooks.active_directory import USER_FILTER, ActiveDirectoryRejected
from panelflow.step import StepReport

from ._backend import CN_MAX, Directory, copy, each_directory, parent_dn, rdn

_CN_FIRST_SEEN = """
INSERT INTO ad_user_cn_upn (directory_id, object_guid, user_principal_name, cn, dn, checked_at)
SELECT %(directory)s, object_guid, upn, cn, dn, %(at)s FROM tmp_cn_users
ON CONFLICT (directory_id, object_guid) DO NOTHING
"""

_CN_CHANGED_UPN = """
SELECT t.object_guid, s.user_principal_name, t.upn, t.cn, t.dn
FROM tmp_cn_users t JOIN ad_user_cn_upn s ON s.directory_id = %(directory)s AND s.object_guid = t.object_guid
WHERE s.user_principal_name <> t.upn
ORDER BY t.dn
"""

_CN_REMEMBER = """
UPDATE ad_user_cn_upn s
SET user_principal_name = t.upn, cn = t.cn, dn = t.dn, checked_at = %(at)s,
    renamed_at = CASE WHEN t.renamed THEN %(at)s ELSE s.renamed_at END
FROM tmp_cn_users t
WHERE s.directory_id = %(directory)s AND s.object_guid = t.object_guid AND NOT t.skipped
  AND (s.user_principal_name, s.cn, s.dn) IS DISTINCT FROM (t.upn, t.cn, t.dn)
"""

_CN_PANEL_USERS = """
UPDATE ad_users u SET cn = t.cn, dn = t.dn, user_principal_name = t.upn
FROM tmp_cn_users t
WHERE u.directory_id = %(directory)s AND u.object_guid = t.object_guid AND t.follow
  AND (u.cn, u.dn, u.user_principal_name) IS DISTINCT FROM (t.cn, t.dn, t.upn)
"""

_CN_FORGET = """
DELETE FROM ad_user_cn_upn WHERE (directory_id, object_guid) IN (
    SELECT s.directory_id, s.object_guid FROM ad_user_cn_upn s
    WHERE s.directory_id = %(directory)s
      AND NOT EXISTS (SELECT 1 FROM tmp_cn_users t WHERE t.object_guid = s.object_guid)
    LIMIT %(batch)s)
"""


def change_cn_on_upn_change(panel_db, interval, params=None, log=None) -> dict:
    """Step 2 of AutoAddUsersInSecurityGroupWork: rename the CN of users whose UPN changed (see the
    module's doc). Params: ``cn_renames_per_run`` (500), ``cn_forget_batch`` (1000)."""
    params = params or {}
    at = interval.end
    per_run = int(params.get("cn_renames_per_run", 500))
    forget_batch = int(params.get("cn_forget_batch", 1000))
    report = StepReport()
    for key in ("users", "first_seen", "upn_changed", "renamed", "cn_already_matches", "collisions"):
        report.add(key, 0)

    def work(conn, directory: Directory, hook) -> None:
        rows = []
        for entry in hook.search(directory.base_dn, f"(&{USER_FILTER}(userPrincipalName=*))",
                                 ["objectGUID", "userPrincipalName", "cn"]):
            try:
                rows.append((entry.guid(), entry.text("userPrincipalName"), entry.text("cn"), entry.dn))
            except ValueError as exc:
                report.skip(str(exc), entry.dn)
        report.add("users", len(rows))
        conn.execute("CREATE TEMP TABLE IF NOT EXISTS tmp_cn_users (object_guid uuid PRIMARY KEY, upn text, cn text,"
                     " dn text, renamed boolean NOT NULL DEFAULT false, skipped boolean NOT NULL DEFAULT false,"
                     " follow boolean NOT NULL DEFAULT false)")
        conn.execute("TRUNCATE tmp_cn_users")
        copy(conn, "tmp_cn_users", ("object_guid", "upn", "cn", "dn"), rows)
        report.add("first_seen", conn.execute(_CN_FIRST_SEEN, {"directory": directory.id, "at": at}).rowcount)
        changed = conn.execute(_CN_CHANGED_UPN, {"directory": directory.id}).fetchall()
        report.add("upn_changed", len(changed))
        # (guid, cn, dn, renamed, skipped: UPN change not handled yet, follow: the panel's user takes cn/dn/UPN)
        outcomes = []
        attempted = 0
        for guid, old_upn, upn, cn, dn in changed:
            wanted = upn.partition("@")[0]
            if cn == wanted:            # renamed already (by a run that died before recording it, or by hand)
                report.add("cn_already_matches")
                outcomes.append((guid, cn, dn, False, False, True))
                continue
            if attempted >= per_run:
                outcomes.append((guid, cn, dn, False, True, False))
                report.add("renames_left_for_next_run")
                continue
            attempted += 1
            if not wanted or len(wanted) > CN_MAX:
                report.skip(f"the UPN's local part {wanted!r} cannot be a CN", dn)
                outcomes.append((guid, cn, dn, False, True, False))
                continue
            holder = hook.get(f"{rdn('CN', wanted)},{parent_dn(dn)}", ["objectGUID"])
            if holder is not None and holder.guid() != guid:
                report.add("collisions")
                report.skip(f"CN collision: {holder.dn} already exists", dn)
                outcomes.append((guid, cn, dn, False, True, False))
                continue
            try:
                new_dn = hook.rename(dn, f"CN={wanted}")
            except ActiveDirectoryRejected as exc:
                if exc.result == 68:
                    report.add("collisions")
                report.skip(f"not renamed: {exc}", dn)
                outcomes.append((guid, cn, dn, False, True, False))
                continue
            report.add("renamed")
            outcomes.append((guid, wanted, new_dn, True, False, True))
            if log is not None:
                log.info("CN of %s → %s (UPN %s → %s)", dn, new_dn, old_upn, upn)
        with conn.transaction():
            if outcomes:
                conn.execute("CREATE TEMP TABLE tmp_cn_outcomes (object_guid uuid, cn text, dn text, renamed boolean,"
                             " skipped boolean, follow boolean) ON COMMIT DROP")
                copy(conn, "tmp_cn_outcomes", ("object_guid", "cn", "dn", "renamed", "skipped", "follow"), outcomes)
                conn.execute("UPDATE tmp_cn_users t SET cn = o.cn, dn = o.dn, renamed = o.renamed, skipped = o.skipped,"
                             " follow = o.follow FROM tmp_cn_outcomes o WHERE o.object_guid = t.object_guid")
            conn.execute(_CN_REMEMBER, {"directory": directory.id, "at": at})
            conn.execute(_CN_PANEL_USERS, {"directory": directory.id})
        forgotten = 0
        for _ in range(1000):        # users gone from the managed subtree, in batches
            n = conn.execute(_CN_FORGET, {"directory": directory.id, "batch": forget_batch}).rowcount
            forgotten += n
            if n < forget_batch:
                break
        report.add("forgotten", forgotten)

    each_directory(panel_db, report, log, work)
    return report.as_dict()

