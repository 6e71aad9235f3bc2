"""SyncMissingDataWork step 1: every AD user's restorable data into ``ad_user_backups`` (0036).

A user deleted by mistake (or by a customer) is recreated from this copy: its names, UPN and
account name, addresses, the extended attributes the panel shows, and the groups it was in
(``memberOf``: AD drops a deleted user from its groups, and the AD recycle bin is not enabled on
every domain). The step compares all users of each directory's managed subtree with the stored
copy and writes only what is missing or differs, at most ``backup_users_per_run`` (20000) rows
per directory (the rest follow next run; ``users_pending`` counts them). A user no longer in AD
gets ``removed_at`` and keeps its row: that is the row a restore needs.

Each directory is one transaction with its ``ad_sync_runs`` row (``sync_each_directory``); a
directory whose read fails half-way changes nothing, so a partial listing never marks users
removed.
"""

from __future__ import annotations

from collections import Counter

from psycopg.types.json import Jsonb

from panelflow.hooks.active_directory import USER_FILTER, dn_key

from ._backend import Directory, copy, org_ids, organisation_of, sync_each_directory

STEP_BACKUP = "sync_missing_ad_user_data"
BACKUP_ATTRIBUTES = (
    "cn", "displayName", "givenName", "sn", "initials", "mail", "proxyAddresses", "description",
    "telephoneNumber", "mobile", "facsimileTelephoneNumber", "homePhone", "title", "department", "company",
    "physicalDeliveryOfficeName", "streetAddress", "l", "st", "postalCode", "c", "co", "employeeID",
    "employeeNumber", "wWWHomePage", "manager", "userAccountControl", "memberOf",
)
MULTI_VALUED = {"proxyAddresses", "memberOf"}

_COLUMNS = ("object_guid", "organisation_id", "sam_account_name", "user_principal_name", "dn", "data")
_WRITE_MISSING = """
INSERT INTO ad_user_backups AS b (directory_id, object_guid, organisation_id, sam_account_name, user_principal_name,
                                  dn, data, backed_up_at)
SELECT %(d)s, i.object_guid, i.organisation_id, i.sam_account_name, i.user_principal_name, i.dn, i.data, %(at)s
FROM _backup_in i LEFT JOIN ad_user_backups b ON b.directory_id = %(d)s AND b.object_guid = i.object_guid
WHERE b.object_guid IS NULL OR b.removed_at IS NOT NULL
   OR (b.organisation_id, b.sam_account_name, b.user_principal_name, b.dn, b.data)
      IS DISTINCT FROM (i.organisation_id, i.sam_account_name, i.user_principal_name, i.dn, i.data)
ORDER BY i.object_guid
LIMIT %(n)s
ON CONFLICT (directory_id, object_guid) DO UPDATE SET organisation_id = EXCLUDED.organisation_id,
    sam_account_name = EXCLUDED.sam_account_name, user_principal_name = EXCLUDED.user_principal_name,
    dn = EXCLUDED.dn, data = EXCLUDED.data, backed_up_at = EXCLUDED.backed_up_at, removed_at = NULL
RETURNING (xmax = 0) AS inserted
"""
_STILL_DIFFERENT = """
SELECT count(*) FROM _backup_in i JOIN ad_user_backups b ON b.directory_id = %(d)s AND b.object_guid = i.object_guid
WHERE b.backed_up_at IS DISTINCT FROM %(at)s AND (b.removed_at IS NOT NULL
   OR (b.organisation_id, b.sam_account_name, b.user_principal_name, b.dn, b.data)
      IS DISTINCT FROM (i.organisation_id, i.sam_account_name, i.user_principal_name, i.dn, i.data))
"""
_NEVER_WRITTEN = """
SELECT count(*) FROM _backup_in i
WHERE NOT EXISTS (SELECT 1 FROM ad_user_backups b WHERE b.directory_id = %(d)s AND b.object_guid = i.object_guid)
"""
_REMOVED = """
UPDATE ad_user_backups b SET removed_at = %(at)s
WHERE b.directory_id = %(d)s AND b.removed_at IS NULL
  AND NOT EXISTS (SELECT 1 FROM _backup_seen s WHERE s.object_guid = b.object_guid)
"""


def backup_data(entry) -> dict:
    """The restorable attributes of one user: multi-valued ones as sorted lists, the rest as text."""
    data: dict = {}
    for name in BACKUP_ATTRIBUTES:
        if not entry.has(name):
            continue
        data[name] = sorted(entry.texts(name)) if name in MULTI_VALUED else entry.text(name)
    return data


def _backup_directory(conn, ad, d: Directory, at, per_run: int, report) -> Counter:
    counts: Counter = Counter(users_read=0, users_written=0, users_added=0, users_removed=0, users_pending=0)
    orgs = org_ids(conn, d)
    rows, seen = [], []
    for entry in ad.search(d.base_dn, USER_FILTER,
                           ("objectGUID", "sAMAccountName", "userPrincipalName", *BACKUP_ATTRIBUTES)):
        counts["users_read"] += 1
        try:
            guid = entry.guid()
            if guid is None:
                raise ValueError("objectGUID: missing")
            seen.append((guid,))
            org_dn = organisation_of(entry.dn, d.base_dn)
            rows.append((guid, orgs.get(dn_key(org_dn)) if org_dn else None, entry.text("sAMAccountName"),
                         entry.text("userPrincipalName"), entry.dn, Jsonb(backup_data(entry))))
        except ValueError as exc:
            report.skip("unreadable user", f"directory {d.name}: {entry.dn}: {exc}")
            counts["users_skipped"] += 1
    conn.execute("CREATE TEMP TABLE _backup_in (object_guid uuid PRIMARY KEY, organisation_id bigint,"
                 " sam_account_name text, user_principal_name text, dn text, data jsonb) ON COMMIT DROP")
    conn.execute("CREATE TEMP TABLE _backup_seen (object_guid uuid PRIMARY KEY) ON COMMIT DROP")
    copy(conn, "_backup_in", _COLUMNS, rows)
    copy(conn, "_backup_seen", ("object_guid",), set(seen))
    args = {"d": d.id, "at": at, "n": per_run}
    written = conn.execute(_WRITE_MISSING, args).fetchall()
    counts["users_written"] += len(written)
    counts["users_added"] += sum(1 for (inserted,) in written if inserted)
    counts["users_pending"] += (conn.execute(_STILL_DIFFERENT, args).fetchone()[0]
                                + conn.execute(_NEVER_WRITTEN, args).fetchone()[0])
    counts["users_removed"] += conn.execute(_REMOVED, args).rowcount
    return counts


def sync_missing_ad_user_data(panel_db, interval, params=None, log=None) -> dict:
    """Sync AD users missing data to sync in backup tables (see the module's doc).
    Params: ``backup_users_per_run`` (20000)."""
    per_run = int((params or {}).get("backup_users_per_run", 20_000))

    def work(conn, ad, d, report):
        counts = _backup_directory(conn, ad, d, interval.end, per_run, report)
        return counts, "full", None, None

    return sync_each_directory(panel_db, interval, log, STEP_BACKUP, work)
