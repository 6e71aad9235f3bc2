"""SyncLockedUsersWork: new and changed users every 15 minutes, then the live lock state.

The user pass is SyncADUsersWork's (a full one only when there is no watermark yet). A lockout ends
by itself after the lockout duration without any write (the computed
``msDS-User-Account-Control-Computed`` changes, ``uSNChanged`` does not), so every run reads the
accounts with a ``lockoutTime`` and takes bit 0x10 of the computed flags as the truth.
"""

from __future__ import annotations

from panelflow.hooks.active_directory import UF_LOCKOUT, USER_FILTER

from ._backend import copy, sync_each_directory
from .sync import user_pass

def sync_locked_users(panel_db, interval, params, log) -> dict:
    """Sync all AD organization users and lock status."""

    def work(conn, ad, d, report):
        before = {g for (g,) in conn.execute("SELECT object_guid FROM ad_users WHERE directory_id = %s AND locked",
                                             (d.id,))}
        counts, mark = user_pass(conn, ad, d, interval, params, report, periodic_full=False)
        rows = []
        for entry in ad.search(d.base_dn, f"(&{USER_FILTER}(lockoutTime>=1))",
                               ["objectGUID", "sAMAccountName", "lockoutTime", "msDS-User-Account-Control-Computed"]):
            counts["lock_entries_read"] += 1
            try:
                locked = bool((entry.int("msDS-User-Account-Control-Computed") or 0) & UF_LOCKOUT)
                rows.append((entry.guid(), locked, entry.filetime("lockoutTime") if locked else None))
            except ValueError as exc:
                report.skip("unreadable lock state", f"directory {d.name}: {entry.dn}: {exc}")
        conn.execute("CREATE TEMP TABLE _ad_locks (object_guid uuid, locked boolean, lockout_time timestamptz)"
                     " ON COMMIT DROP")
        copy(conn, "_ad_locks", ("object_guid", "locked", "lockout_time"), rows)
        counts["lock_states_written"] += conn.execute("""
            UPDATE ad_users u SET locked = l.locked, lockout_time = l.lockout_time
            FROM _ad_locks l
            WHERE u.directory_id = %s AND u.object_guid = l.object_guid
              AND (u.locked, u.lockout_time) IS DISTINCT FROM (l.locked, l.lockout_time)""", (d.id,)).rowcount
        # lockoutTime back to 0 (an unlock, or a password reset): not in the search any more.
        counts["lock_states_written"] += conn.execute("""
            UPDATE ad_users u SET locked = false, lockout_time = NULL
            WHERE u.directory_id = %s AND (u.locked OR u.lockout_time IS NOT NULL)
              AND NOT EXISTS (SELECT 1 FROM _ad_locks l WHERE l.object_guid = u.object_guid)""", (d.id,)).rowcount
        after = {g for (g,) in conn.execute("SELECT object_guid FROM ad_users WHERE directory_id = %s AND locked",
                                            (d.id,))}
        counts["newly_locked"] += len(after - before)
        counts["unlocked"] += len(before - after)
        unknown = conn.execute("SELECT count(*) FROM _ad_locks l WHERE l.locked AND NOT EXISTS (SELECT 1 FROM"
                               " ad_users u WHERE u.directory_id = %s AND u.object_guid = l.object_guid)",
                               (d.id,)).fetchone()[0]
        if unknown:
            report.skip("locked user not synced (outside the organisations)", f"directory {d.name}: {unknown} user(s)")
        counts["locked_users"] += conn.execute("SELECT count(*) FROM ad_users WHERE directory_id = %s AND locked"
                                               " AND NOT deleted", (d.id,)).fetchone()[0]
        return counts, mark.mode, mark.since, mark.usn_now

    return sync_each_directory(panel_db, interval, log, "sync_locked_users", work)

