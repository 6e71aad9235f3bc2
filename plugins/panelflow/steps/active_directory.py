"""Active Directory: users, organisations, groups, lock state, password expiry, staff, RDS, services.

Every step works each enabled ``ad_directories`` row through its own Airflow connection
(``conn_id``, :class:`~panelflow.hooks.active_directory.ActiveDirectoryHook`); a directory that
cannot be reached or refuses the service account is recorded (``last_error``, an ``ad_sync_runs``
row with the error) and named in the summary while the others are worked, and the step fails
only when every directory failed. Each directory's writes are one transaction: a directory
that fails half-way leaves its rows and watermark as they were. Organisations are the OUs
directly under the directory's ``base_dn``; a user elsewhere in the subtree (directly in
``base_dn``) belongs to no customer and is reported and skipped.

Steps (catalog thread → step):

- SyncADUsersWork :func:`sync_ad_users` — organisations, users, groups (with members) and UPN
  suffixes. Incremental by ``uSNChanged`` (why not DirSync: see the hook's module doc): a pass
  reads only the objects changed since the watermark, and writes only rows whose values differ
  (``written`` counts real changes). Deletions come from the tombstones; a full pass — the first,
  after the DC or its database changed (``invocationId``), or every ``ad_full_sync_hours`` (24) —
  reads everything and marks what it did not see as deleted, which also catches objects moved out
  of the managed subtree (no search under ``base_dn`` sees those, not even a tombstone search).
  A renamed or moved OU changes its users' DNs without touching their ``uSNChanged``, so the users
  under a changed OU are read again.
- SyncLockedUsersWork :func:`sync_locked_users` — the same incremental user pass (new and changed
  users every 15 minutes, a full one only when there is no watermark yet) and then the live lock
  state: a lockout ends by itself after the lockout duration without any write (the computed
  ``msDS-User-Account-Control-Computed`` changes, ``uSNChanged`` does not), so every run reads the
  accounts with a ``lockoutTime`` and takes bit 0x10 of the computed flags as the truth.
- UserPasswordExpiryNotificationWork :func:`send_password_expiry_notices` — live read of
  ``msDS-UserPasswordExpiryTimeComputed`` (it follows a policy change without a write to the user),
  one e-mail per user and expiry.
- SyncStaffUsersWork :func:`sync_staff_users`; RDSSyncWork :func:`sync_rds_users`;
  GroupActionWorkAD :func:`update_ad_extended_data`, :func:`sync_ad_user_services`.

Clock: ``interval.end`` stamps every row (``synced_at``, ``deleted_at``, notices); due dates are
measured from it.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta, timezone
from typing import Any

from psycopg.types.json import Jsonb

from panelflow.step import StepReport

STEP_USERS = "sync_ad_users"
STEP_EXTENDED = "update_ad_extended_data"
STEP_SERVICES = "sync_ad_user_services"
FULL_SYNC_HOURS = 24
NOTICE_DAYS = 14
GUID_BATCH = 100           # GUIDs per OR-filter when reading known users back
CATCH_UP_LIMIT = 20_000    # users read back per run because a step has never read them
KEEP_DIRECTORIES = 50

USER_ATTRIBUTES = (
    "objectGUID", "objectSid", "sAMAccountName", "userPrincipalName", "cn", "displayName", "givenName", "sn",
    "mail", "userAccountControl", "msDS-User-Account-Control-Computed", "lockoutTime", "pwdLastSet",
    "msDS-UserPasswordExpiryTimeComputed", "whenCreated", "whenChanged", "uSNChanged",
)
OU_ATTRIBUTES = ("objectGUID", "ou", "description", "uPNSuffixes", "whenChanged", "uSNChanged")
GROUP_ATTRIBUTES = ("objectGUID", "objectSid", "sAMAccountName", "cn", "mail", "description", "groupType",
                    "whenChanged", "uSNChanged", "member")
EXTENDED_ATTRIBUTES = {
    # AD attribute → kind of value
    "telephoneNumber": "text", "mobile": "text", "facsimileTelephoneNumber": "text", "homePhone": "text",
    "title": "text", "department": "text", "company": "text", "physicalDeliveryOfficeName": "text",
    "streetAddress": "text", "l": "text", "st": "text", "postalCode": "text", "co": "text", "c": "text",
    "description": "text", "employeeID": "text", "employeeNumber": "text", "wWWHomePage": "text",
    "manager": "text", "lastLogonTimestamp": "filetime", "accountExpires": "filetime", "logonCount": "int",
}
SERVICE_ATTRIBUTES = ("objectGUID", "mail", "proxyAddresses", "targetAddress", "homeMDB", "msExchMailboxGuid",
                      "msExchRecipientTypeDetails", "msNPAllowDialin", "msRTCSIP-UserEnabled",
                      "msRTCSIP-PrimaryUserAddress")
STAFF_ATTRIBUTES = ("objectGUID", "sAMAccountName", "displayName", "givenName", "sn", "mail", "telephoneNumber",
                    "mobile", "title", "department", "company", "physicalDeliveryOfficeName", "employeeID",
                    "userAccountControl")

# msExchRecipientTypeDetails values that are mailboxes (Exchange's RecipientTypeDetails flags).
MAILBOX_TYPES = {1: "UserMailbox", 2: "LinkedMailbox", 4: "SharedMailbox", 16: "RoomMailbox", 32: "EquipmentMailbox",
                 2147483648: "RemoteUserMailbox", 8589934592: "RemoteRoomMailbox",
                 17179869184: "RemoteEquipmentMailbox", 34359738368: "RemoteSharedMailbox"}


@dataclass
class Directory:
    id: int
    name: str
    conn_id: str
    base_dn: str
    rds_group_dn: str | None


class _DirectoryFailed(Exception):
    def __init__(self, reason: str, message: str):
        self.reason = reason
        super().__init__(message)


# -- the per-directory loop -------------------------------------------------------------------------

def _for_each_directory(panel_db, interval, params, log, step: str, work: Callable) -> dict:
    """Run ``work(conn, ad, directory, report) -> (counts, mode, usn_from, usn_to)`` for each enabled
    directory in its own transaction; record the run or the failure per directory."""
    from airflow.exceptions import AirflowNotFoundException

    from panelflow.hooks.active_directory import (ActiveDirectoryConfigError, ActiveDirectoryError, ActiveDirectoryHook,
                                                  ActiveDirectoryRejected)

    report = StepReport()
    per_directory: dict[str, dict] = {}
    with panel_db.get_conn() as conn:
        conn.autocommit = True
        directories = [Directory(*row) for row in conn.execute(
            "SELECT id, name, conn_id, base_dn, rds_group_dn FROM ad_directories WHERE enabled ORDER BY id")]
        for d in directories:
            try:
                ad = ActiveDirectoryHook(d.conn_id)   # fetched here, on the task's own thread
                try:
                    with conn.transaction():
                        counts, mode, usn_from, usn_to = work(conn, ad, d, report)
                        _record_run(conn, d, step, interval.end, mode, usn_from, usn_to, counts, None)
                finally:
                    ad.close()
            except (ActiveDirectoryError, AirflowNotFoundException, _DirectoryFailed) as exc:
                reason = ("directory refused the operation" if isinstance(exc, ActiveDirectoryRejected)
                          else exc.reason if isinstance(exc, _DirectoryFailed)
                          else "connection not configured" if isinstance(exc, (AirflowNotFoundException,
                                                                               ActiveDirectoryConfigError))
                          else "directory unavailable")
                report.add("directories_failed")
                report.skip(reason, f"directory {d.name} ({d.conn_id}): {exc}")
                if log is not None:
                    log.warning("AD %s: directory %s (%s) failed: %s", step, d.name, d.conn_id, exc)
                with conn.transaction():
                    conn.execute("UPDATE ad_directories SET last_error = %s, last_error_at = %s WHERE id = %s",
                                 (str(exc)[:2000], interval.end, d.id))
                    _record_run(conn, d, step, interval.end, "live", None, None, {}, str(exc)[:2000])
                if len(per_directory) < KEEP_DIRECTORIES:
                    per_directory[d.name] = {"error": str(exc)[:300]}
                continue
            report.add("directories_synced")
            for key, n in counts.items():
                if isinstance(n, int):
                    report.add(key, n)
            if len(per_directory) < KEEP_DIRECTORIES:
                per_directory[d.name] = {"mode": mode, **counts}
            if log is not None:
                log.info("AD %s: directory %s: %s %s", step, d.name, mode, dict(counts))
    report.counts.setdefault("directories_synced", 0)
    report.counts.setdefault("directories_failed", 0)
    summary = report.as_dict()
    summary["directories"] = per_directory
    if directories and not report.counts["directories_synced"]:
        raise RuntimeError(f"AD {step}: none of the {len(directories)} directories could be worked: "
                           f"{summary['skipped_examples'][:5]}")
    return summary


def _record_run(conn, d: Directory, step, at, mode, usn_from, usn_to, counts, error) -> None:
    conn.execute(
        "INSERT INTO ad_sync_runs (directory_id, step, interval_end, mode, usn_from, usn_to, counts, error, finished_at)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (directory_id, step, interval_end) DO UPDATE SET mode = EXCLUDED.mode,"
        " usn_from = EXCLUDED.usn_from, usn_to = EXCLUDED.usn_to, counts = EXCLUDED.counts, error = EXCLUDED.error,"
        " finished_at = EXCLUDED.finished_at",
        (d.id, step, at, mode, usn_from, usn_to, Jsonb({k: v for k, v in counts.items() if isinstance(v, int)}),
         error, at))


class _Watermark:
    """One step's USN watermark for one directory: decides full or incremental, and is saved with
    the pass's writes (same transaction)."""

    def __init__(self, conn, ad, d: Directory, step: str, interval, params, *, periodic_full: bool = True):
        dse = ad.root_dse()
        self.conn, self.d, self.step = conn, d, step
        self.usn_now = dse["highestCommittedUSN"]
        self.invocation = dse["invocationId"]
        self.dse = dse
        row = conn.execute("SELECT usn_watermark, dc_invocation_id, last_full_at FROM ad_sync_state"
                           " WHERE directory_id = %s AND step = %s FOR UPDATE", (d.id, step)).fetchone()
        usn, invocation, last_full = row if row else (None, None, None)
        hours = float((params or {}).get("ad_full_sync_hours", FULL_SYNC_HOURS))
        self.full = (usn is None or invocation != self.invocation or bool((params or {}).get("ad_full_sync"))
                     or (periodic_full and (last_full is None or interval.end - last_full >= timedelta(hours=hours))))
        self.since = None if self.full else usn
        self.at = interval.end

    @property
    def mode(self) -> str:
        return "full" if self.full else "incremental"

    def save(self) -> None:
        self.conn.execute(
            "INSERT INTO ad_sync_state (directory_id, step, usn_watermark, dc_invocation_id, last_full_at, last_synced_at)"
            " VALUES (%(d)s, %(step)s, %(usn)s, %(inv)s, CASE WHEN %(full)s THEN %(at)s::timestamptz END, %(at)s)"
            " ON CONFLICT (directory_id, step) DO UPDATE SET usn_watermark = EXCLUDED.usn_watermark,"
            " dc_invocation_id = EXCLUDED.dc_invocation_id, last_synced_at = EXCLUDED.last_synced_at,"
            " last_full_at = coalesce(EXCLUDED.last_full_at, ad_sync_state.last_full_at)",
            {"d": self.d.id, "step": self.step, "usn": self.usn_now, "inv": self.invocation, "full": self.full,
             "at": self.at})


def _copy(conn, table: str, columns: Iterable[str], rows: Iterable[tuple]) -> int:
    n = 0
    with conn.cursor() as cur:
        with cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
                n += 1
    return n


def _mark_unseen(conn, table: str, d: Directory, at, seen: list[tuple]) -> int:
    """After a full pass: the table's rows of the directory the pass did not see are deleted in AD
    (or moved out of the managed subtree)."""
    temp = f"_seen_{table}"
    conn.execute(f"CREATE TEMP TABLE {temp} (object_guid uuid PRIMARY KEY) ON COMMIT DROP")
    _copy(conn, temp, ("object_guid",), set(seen))
    return conn.execute(f"UPDATE {table} t SET deleted = true, deleted_at = %s WHERE t.directory_id = %s"
                        f" AND NOT t.deleted AND NOT EXISTS (SELECT 1 FROM {temp} s WHERE s.object_guid = t.object_guid)",
                        (at, d.id)).rowcount


def _organisation_of(dn: str, base_dn: str) -> str | None:
    """The DN of the organisation OU (directly under ``base_dn``) holding ``dn``; None outside any."""
    from panelflow.hooks.active_directory import parent_under

    top = parent_under(dn, base_dn)
    return top if top is not None and top[:3].upper() == "OU=" else None


def _org_ids(conn, d: Directory) -> dict[str, int]:
    from panelflow.hooks.active_directory import dn_key

    return {dn_key(dn): oid for oid, dn in conn.execute(
        "SELECT id, dn FROM ad_organisations WHERE directory_id = %s AND NOT deleted", (d.id,))}


# -- 1. SyncADUsersWork -----------------------------------------------------------------------------

_USER_COLUMNS = ("organisation_id", "object_guid", "object_sid", "sam_account_name", "user_principal_name", "cn",
                 "dn", "display_name", "given_name", "surname", "mail", "user_account_control", "enabled",
                 "password_never_expires", "locked", "lockout_time", "password_last_set", "password_expires_at",
                 "when_created", "when_changed", "usn_changed")
_USER_TEMP = """
CREATE TEMP TABLE _ad_users_in (
    organisation_id bigint, object_guid uuid, object_sid text, sam_account_name text, user_principal_name text,
    cn text, dn text, display_name text, given_name text, surname text, mail text, user_account_control integer,
    enabled boolean, password_never_expires boolean, locked boolean, lockout_time timestamptz,
    password_last_set timestamptz, password_expires_at timestamptz, when_created timestamptz,
    when_changed timestamptz, usn_changed bigint
) ON COMMIT DROP
"""
_USER_UPSERT = f"""
INSERT INTO ad_users AS u (directory_id, {', '.join(_USER_COLUMNS)}, synced_at)
SELECT %(d)s, {', '.join(_USER_COLUMNS)}, %(at)s FROM _ad_users_in
ON CONFLICT (directory_id, object_guid) DO UPDATE SET
    {', '.join(f'{c} = EXCLUDED.{c}' for c in _USER_COLUMNS if c != 'object_guid')},
    deleted = false, deleted_at = NULL, synced_at = EXCLUDED.synced_at
WHERE ({', '.join(f'u.{c}' for c in _USER_COLUMNS)}, u.deleted)
      IS DISTINCT FROM ({', '.join(f'EXCLUDED.{c}' for c in _USER_COLUMNS)}, false)
RETURNING (xmax = 0) AS inserted
"""


def _user_row(entry, org_id: int) -> tuple:
    """The ``ad_users`` columns of one entry (raises ValueError for a value that does not parse)."""
    from panelflow.hooks.active_directory import UF_ACCOUNTDISABLE, UF_DONT_EXPIRE_PASSWD, UF_LOCKOUT

    guid = entry.guid()
    if guid is None:
        raise ValueError("objectGUID: missing")
    uac = entry.int("userAccountControl")
    if uac is None:
        raise ValueError("userAccountControl: missing")
    computed = entry.int("msDS-User-Account-Control-Computed") or 0
    locked = bool(computed & UF_LOCKOUT)
    never = bool(uac & UF_DONT_EXPIRE_PASSWD)
    return (org_id, guid, entry.sid(), entry.text("sAMAccountName"), entry.text("userPrincipalName"),
            entry.text("cn"), entry.dn, entry.text("displayName"), entry.text("givenName"), entry.text("sn"),
            entry.text("mail"), uac, not (uac & UF_ACCOUNTDISABLE), never, locked,
            entry.filetime("lockoutTime") if locked else None, entry.filetime("pwdLastSet"),
            None if never else entry.filetime("msDS-UserPasswordExpiryTimeComputed"),
            entry.time("whenCreated"), entry.time("whenChanged"), entry.int("uSNChanged"))


def _sync_organisations(conn, ad, d: Directory, since, full: bool, at, report: StepReport,
                        counts: Counter) -> list[str]:
    """Upsert the organisation OUs changed since ``since`` → the DNs under which users must be read
    again (renamed or moved OUs, at any depth)."""
    from panelflow.hooks.active_directory import OU_FILTER, dn_key

    known = {guid: dn for guid, dn in conn.execute(
        "SELECT object_guid, dn FROM ad_organisations WHERE directory_id = %s", (d.id,))}
    rows, reread, seen = [], [], []
    for entry in ad.changed_since(d.base_dn, OU_FILTER, since, OU_ATTRIBUTES):
        counts["ous_read"] += 1
        top = _organisation_of(entry.dn, d.base_dn)
        if top is None:
            continue                                      # the base itself
        if dn_key(top) != dn_key(entry.dn):
            if not full:
                reread.append(entry.dn)                   # a sub-OU changed: its users' DNs may have too
            continue
        try:
            guid = entry.guid()
            if guid is None:
                raise ValueError("objectGUID: missing")
            seen.append((guid,))
            row = (guid, entry.dn, entry.text("ou") or entry.dn.split(",", 1)[0][3:], entry.text("description"),
                   [s.lower() for s in entry.texts("uPNSuffixes")], entry.time("whenChanged"),
                   entry.int("uSNChanged"))
        except ValueError as exc:
            report.skip("unreadable organisation OU", f"directory {d.name}: {entry.dn}: {exc}")
            continue
        if not full and (guid not in known or dn_key(known[guid]) != dn_key(entry.dn)):
            reread.append(entry.dn)
        rows.append(row)
    conn.execute("CREATE TEMP TABLE _ad_ous_in (object_guid uuid, dn text, name text, description text,"
                 " upn_suffixes text[], when_changed timestamptz, usn_changed bigint) ON COMMIT DROP")
    _copy(conn, "_ad_ous_in", ("object_guid", "dn", "name", "description", "upn_suffixes", "when_changed",
                               "usn_changed"), rows)
    cur = conn.execute("""
        INSERT INTO ad_organisations AS o (directory_id, object_guid, dn, name, description, upn_suffixes,
                                           when_changed, usn_changed, synced_at)
        SELECT %(d)s, object_guid, dn, name, description, upn_suffixes, when_changed, usn_changed, %(at)s FROM _ad_ous_in
        ON CONFLICT (directory_id, object_guid) DO UPDATE SET dn = EXCLUDED.dn, name = EXCLUDED.name,
            description = EXCLUDED.description, upn_suffixes = EXCLUDED.upn_suffixes,
            when_changed = EXCLUDED.when_changed, usn_changed = EXCLUDED.usn_changed, deleted = false,
            deleted_at = NULL, synced_at = EXCLUDED.synced_at
        WHERE (o.dn, o.name, o.description, o.upn_suffixes, o.usn_changed, o.deleted)
              IS DISTINCT FROM (EXCLUDED.dn, EXCLUDED.name, EXCLUDED.description, EXCLUDED.upn_suffixes,
                                EXCLUDED.usn_changed, false)""", {"d": d.id, "at": at})
    counts["organisations_written"] += cur.rowcount
    if full:
        counts["organisations_deleted"] += _mark_unseen(conn, "ad_organisations", d, at, seen)
    return reread


def _user_entries(ad, d: Directory, since, reread: list[str]):
    """The changed users, then those under OUs that changed (each GUID once)."""
    from panelflow.hooks.active_directory import USER_FILTER

    seen: set[bytes] = set()
    sources = [ad.changed_since(d.base_dn, USER_FILTER, since, USER_ATTRIBUTES)]
    sources += [ad.search(dn, USER_FILTER, USER_ATTRIBUTES) for dn in reread]
    for source in sources:
        for entry in source:
            raw = entry.raw("objectGUID")
            key = raw[0] if raw else entry.dn.encode()
            if key in seen:
                continue
            seen.add(key)
            yield entry


def _sync_users(conn, ad, d: Directory, mark: _Watermark, report: StepReport, counts: Counter,
                reread: list[str]) -> None:
    orgs = _org_ids(conn, d)
    seen: list[tuple] = []
    rows: list[tuple] = []
    from panelflow.hooks.active_directory import dn_key

    for entry in _user_entries(ad, d, mark.since, reread):
        counts["users_read"] += 1
        try:
            guid = entry.guid()
        except ValueError as exc:
            report.skip("unreadable user", f"{entry.dn}: {exc}")
            counts["users_skipped"] += 1
            continue
        if guid is not None:
            seen.append((guid,))
        org_dn = _organisation_of(entry.dn, d.base_dn)
        if org_dn is None:
            report.skip("user outside any organisation OU", f"directory {d.name}: {entry.dn}")
            counts["users_skipped"] += 1
            continue
        org_id = orgs.get(dn_key(org_dn))
        if org_id is None:
            report.skip("organisation OU not synced", f"directory {d.name}: {entry.dn}")
            counts["users_skipped"] += 1
            continue
        try:
            rows.append(_user_row(entry, org_id))
        except ValueError as exc:
            report.skip("unreadable user", f"directory {d.name}: {entry.dn}: {exc}")
            counts["users_skipped"] += 1
    conn.execute(_USER_TEMP)
    _copy(conn, "_ad_users_in", _USER_COLUMNS, rows)
    results = conn.execute(_USER_UPSERT, {"d": d.id, "at": mark.at}).fetchall()
    counts["users_written"] += len(results)
    counts["users_inserted"] += sum(1 for (inserted,) in results if inserted)
    if mark.full:
        counts["users_deleted"] += _mark_unseen(conn, "ad_users", d, mark.at, seen)


def _sync_groups(conn, ad, d: Directory, mark: _Watermark, report: StepReport, counts: Counter) -> None:
    from ldap3.protocol.microsoft import extended_dn_control

    from panelflow.hooks.active_directory import GROUP_FILTER, dn_key

    orgs = _org_ids(conn, d)
    groups, members, seen = [], [], []
    for entry in ad.changed_since(d.base_dn, GROUP_FILTER, mark.since, GROUP_ATTRIBUTES,
                                  controls=[extended_dn_control(criticality=True, hex_format=False)]):
        counts["groups_read"] += 1
        try:
            guid = entry.guid()
            if guid is None:
                raise ValueError("objectGUID: missing")
            seen.append((guid,))
            org_dn = _organisation_of(entry.dn, d.base_dn)
            groups.append((orgs.get(dn_key(org_dn)) if org_dn else None, guid, entry.sid(),
                           entry.text("sAMAccountName"), entry.text("cn"), entry.dn, entry.text("mail"),
                           entry.text("description"), entry.int("groupType"), entry.time("whenChanged"),
                           entry.int("uSNChanged")))
            listed = ad.members_with_guids(entry.dn) if entry.partial("member") else entry.extended_dns("member")
            members += [(guid, member, dn) for member, dn in listed]
        except ValueError as exc:
            report.skip("unreadable group", f"directory {d.name}: {entry.dn}: {exc}")
            counts["groups_skipped"] += 1
    cols = ("organisation_id", "object_guid", "object_sid", "sam_account_name", "cn", "dn", "mail", "description",
            "group_type", "when_changed", "usn_changed")
    conn.execute("CREATE TEMP TABLE _ad_groups_in (organisation_id bigint, object_guid uuid, object_sid text,"
                 " sam_account_name text, cn text, dn text, mail text, description text, group_type integer,"
                 " when_changed timestamptz, usn_changed bigint) ON COMMIT DROP")
    conn.execute("CREATE TEMP TABLE _ad_members_in (group_guid uuid, member_guid uuid, member_dn text) ON COMMIT DROP")
    _copy(conn, "_ad_groups_in", cols, groups)
    _copy(conn, "_ad_members_in", ("group_guid", "member_guid", "member_dn"), members)
    counts["groups_written"] += conn.execute(f"""
        INSERT INTO ad_groups AS g (directory_id, {', '.join(cols)}, synced_at)
        SELECT %(d)s, {', '.join(cols)}, %(at)s FROM _ad_groups_in
        ON CONFLICT (directory_id, object_guid) DO UPDATE SET
            {', '.join(f'{c} = EXCLUDED.{c}' for c in cols if c != 'object_guid')},
            deleted = false, deleted_at = NULL, synced_at = EXCLUDED.synced_at
        WHERE ({', '.join(f'g.{c}' for c in cols)}, g.deleted)
              IS DISTINCT FROM ({', '.join(f'EXCLUDED.{c}' for c in cols)}, false)""",
                                             {"d": d.id, "at": mark.at}).rowcount
    # The member lists of the groups read replace what was stored for them.
    removed = conn.execute("""
        DELETE FROM ad_group_members m USING ad_groups g, _ad_groups_in i
        WHERE g.directory_id = %s AND g.object_guid = i.object_guid AND m.group_id = g.id
          AND NOT EXISTS (SELECT 1 FROM _ad_members_in n WHERE n.group_guid = i.object_guid
                                                          AND n.member_guid = m.member_guid)""", (d.id,)).rowcount
    added = conn.execute("""
        INSERT INTO ad_group_members AS m (group_id, member_guid, member_dn)
        SELECT g.id, n.member_guid, n.member_dn FROM _ad_members_in n
        JOIN ad_groups g ON g.directory_id = %s AND g.object_guid = n.group_guid
        ON CONFLICT (group_id, member_guid) DO UPDATE SET member_dn = EXCLUDED.member_dn
        WHERE m.member_dn IS DISTINCT FROM EXCLUDED.member_dn""", (d.id,)).rowcount
    counts["members_written"] += removed + added
    if mark.full:
        counts["groups_deleted"] += _mark_unseen(conn, "ad_groups", d, mark.at, seen)


def _sync_tombstones(conn, ad, d: Directory, mark: _Watermark, counts: Counter) -> None:
    """Objects deleted since the watermark (their tombstones keep the GUID)."""
    if mark.full:
        return
    by_class: dict[str, list[uuid.UUID]] = {"ad_users": [], "ad_groups": [], "ad_organisations": []}
    flt = "(|(objectClass=user)(objectClass=group)(objectClass=organizationalUnit))"   # tombstones lose objectCategory
    for entry in ad.deleted_since(mark.since, flt, ("objectClass", "lastKnownParent")):
        counts["tombstones_read"] += 1
        classes = {c.lower() for c in entry.texts("objectClass")}
        table = ("ad_users" if "user" in classes and "computer" not in classes else "ad_groups" if "group" in classes
                 else "ad_organisations" if "organizationalunit" in classes else None)
        guid = entry.guid()
        if table and guid:
            by_class[table].append(guid)
    for table, guids in by_class.items():
        if guids:
            counts[f"{table[3:]}_deleted"] += conn.execute(
                f"UPDATE {table} SET deleted = true, deleted_at = %s WHERE directory_id = %s AND NOT deleted"
                " AND object_guid = ANY(%s::uuid[])", (mark.at, d.id, guids)).rowcount


def _sync_upn_suffixes(conn, ad, d: Directory, mark: _Watermark, counts: Counter) -> None:
    from ldap3.utils.dn import to_dn

    dse = mark.dse
    domain = ".".join(v for k, v in to_dn(dse["defaultNamingContext"], decompose=True) if k.upper() == "DC").lower()
    rows = [(domain, "domain", None)]
    partitions = ad.get(f"CN=Partitions,{dse['configurationNamingContext']}", ["uPNSuffixes"])
    for suffix in (partitions.texts("uPNSuffixes") if partitions else []):
        rows.append((suffix.lower(), "forest", None))
    for oid, suffixes in conn.execute("SELECT id, upn_suffixes FROM ad_organisations WHERE directory_id = %s"
                                      " AND NOT deleted ORDER BY id", (d.id,)):
        rows += [(s, "organisation", oid) for s in suffixes]
    unique: dict[str, tuple] = {}
    for suffix, source, oid in rows:
        unique.setdefault(suffix, (suffix, source, oid))
    conn.execute("CREATE TEMP TABLE _ad_upn_in (suffix text, source text, organisation_id bigint) ON COMMIT DROP")
    _copy(conn, "_ad_upn_in", ("suffix", "source", "organisation_id"), unique.values())
    n = conn.execute("DELETE FROM ad_upn_suffixes s WHERE directory_id = %s"
                     " AND NOT EXISTS (SELECT 1 FROM _ad_upn_in i WHERE i.suffix = s.suffix)", (d.id,)).rowcount
    n += conn.execute("""
        INSERT INTO ad_upn_suffixes AS s (directory_id, suffix, source, organisation_id, synced_at)
        SELECT %s, suffix, source, organisation_id, %s FROM _ad_upn_in
        ON CONFLICT (directory_id, suffix) DO UPDATE SET source = EXCLUDED.source,
            organisation_id = EXCLUDED.organisation_id, synced_at = EXCLUDED.synced_at
        WHERE (s.source, s.organisation_id) IS DISTINCT FROM (EXCLUDED.source, EXCLUDED.organisation_id)""",
                      (d.id, mark.at)).rowcount
    counts["upn_suffixes_written"] += n
    conn.execute("UPDATE ad_directories SET dns_domain = %s WHERE id = %s AND dns_domain IS DISTINCT FROM %s",
                 (domain, d.id, domain))


def _user_pass(conn, ad, d: Directory, interval, params, report: StepReport, *, periodic_full: bool) -> tuple:
    mark = _Watermark(conn, ad, d, STEP_USERS, interval, params, periodic_full=periodic_full)
    counts: Counter = Counter()
    reread = _sync_organisations(conn, ad, d, mark.since, mark.full, mark.at, report, counts)
    _sync_users(conn, ad, d, mark, report, counts, reread)
    _sync_groups(conn, ad, d, mark, report, counts)
    _sync_tombstones(conn, ad, d, mark, counts)
    _sync_upn_suffixes(conn, ad, d, mark, counts)
    mark.save()
    conn.execute("UPDATE ad_directories SET last_synced_at = %s, last_error = NULL, last_error_at = NULL"
                 " WHERE id = %s", (mark.at, d.id))
    for key in ("users_read", "users_written", "users_inserted", "users_deleted", "users_skipped",
                "organisations_written", "groups_read", "groups_written", "groups_deleted", "members_written"):
        counts.setdefault(key, 0)
    return counts, mark


def sync_ad_users(panel_db, interval, params, log) -> dict:
    """Sync all AD Users into database."""

    def work(conn, ad, d, report):
        counts, mark = _user_pass(conn, ad, d, interval, params, report, periodic_full=True)
        return counts, mark.mode, mark.since, mark.usn_now

    return _for_each_directory(panel_db, interval, params, log, STEP_USERS, work)


# -- 2. SyncLockedUsersWork -------------------------------------------------------------------------

def sync_locked_users(panel_db, interval, params, log) -> dict:
    """Sync all AD organization users and lock status."""
    from panelflow.hooks.active_directory import UF_LOCKOUT, USER_FILTER

    def work(conn, ad, d, report):
        before = {g for (g,) in conn.execute("SELECT object_guid FROM ad_users WHERE directory_id = %s AND locked",
                                             (d.id,))}
        counts, mark = _user_pass(conn, ad, d, interval, params, report, periodic_full=False)
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
        _copy(conn, "_ad_locks", ("object_guid", "locked", "lockout_time"), rows)
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

    return _for_each_directory(panel_db, interval, params, log, "sync_locked_users", work)


# -- 3. UserPasswordExpiryNotificationWork ---------------------------------------------------------

def send_password_expiry_notices(panel_db, interval, params, log) -> dict:
    """Send notification to AD users whose password is about to expire."""
    from panelflow.services import outbox as mail
    from panelflow.hooks.active_directory import (MATCHING_RULE_BIT_AND, UF_ACCOUNTDISABLE, UF_DONT_EXPIRE_PASSWD,
                                                  USER_FILTER, dn_key)

    days = int((params or {}).get("password_expiry_notice_days", NOTICE_DAYS))
    horizon = interval.end + timedelta(days=days)
    flt = (f"(&{USER_FILTER}(!(userAccountControl:{MATCHING_RULE_BIT_AND}:={UF_ACCOUNTDISABLE}))"
           f"(!(userAccountControl:{MATCHING_RULE_BIT_AND}:={UF_DONT_EXPIRE_PASSWD})))")
    attributes = ["objectGUID", "sAMAccountName", "userPrincipalName", "displayName", "givenName", "mail",
                  "msDS-UserPasswordExpiryTimeComputed"]

    def work(conn, ad, d, report):
        counts: Counter = Counter()
        orgs = {dn_key(dn): (name, provider) for dn, name, provider in conn.execute(
            "SELECT o.dn, o.name, coalesce(p.name, %s) FROM ad_organisations o"
            " LEFT JOIN customers c ON c.id = o.customer_id LEFT JOIN providers p ON p.id = c.provider_id"
            " WHERE o.directory_id = %s AND NOT o.deleted", (d.name, d.id))}
        expiries, due = [], []
        for entry in ad.search(d.base_dn, flt, attributes):
            counts["users_read"] += 1
            account = entry.text("userPrincipalName") or entry.text("sAMAccountName") or entry.dn
            try:
                guid = entry.guid()
                expires = entry.filetime("msDS-UserPasswordExpiryTimeComputed")
            except ValueError as exc:
                report.skip("unreadable user", f"directory {d.name}: {entry.dn}: {exc}")
                continue
            org_dn = _organisation_of(entry.dn, d.base_dn)
            if org_dn is None:
                counts["outside_organisations"] += 1
                continue
            expiries.append((guid, expires))
            if expires is None:
                continue                                    # must change at next logon, or never expires
            if expires <= interval.end:
                counts["already_expired"] += 1
                continue
            if expires > horizon:
                continue
            counts["expiring"] += 1
            address = (entry.text("mail") or "").strip()
            if not address:
                report.skip("no mail address", f"directory {d.name}: {account}")
                continue
            if "@" not in address or any(c.isspace() for c in address):
                report.skip("mail is not an address", f"directory {d.name}: {account}: {address!r}")
                continue
            due.append((guid, expires, address, {
                "display_name": entry.text("displayName") or entry.text("givenName") or account,
                "account": account, "organisation": orgs.get(dn_key(org_dn), ("", d.name))[0],
                "provider": orgs.get(dn_key(org_dn), ("", d.name))[1],
                "expires_at": expires.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                "days_left": max(1, (expires - interval.end) // timedelta(days=1))}))   # whole days left
        # The DB follows the expiry as AD computes it now (a policy change moves it without a write to the user).
        conn.execute("CREATE TEMP TABLE _ad_expiry (object_guid uuid, expires timestamptz) ON COMMIT DROP")
        _copy(conn, "_ad_expiry", ("object_guid", "expires"), expiries)
        counts["users_written"] += conn.execute(
            "UPDATE ad_users u SET password_expires_at = e.expires FROM _ad_expiry e WHERE u.directory_id = %s"
            " AND u.object_guid = e.object_guid AND u.password_expires_at IS DISTINCT FROM e.expires",
            (d.id,)).rowcount
        for guid, expires, address, context in due:        # bounded: the users due within the notice window
            key = f"ad_password_expiry:{d.id}:{guid}:{expires.astimezone(timezone.utc).isoformat()}"
            row = conn.execute(
                "INSERT INTO ad_password_expiry_notices (directory_id, object_guid, password_expires_at, mail,"
                " dedupe_key, queued_at) VALUES (%s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (directory_id, object_guid, password_expires_at) DO NOTHING RETURNING id",
                (d.id, guid, expires, address, key, interval.end)).fetchone()
            if row is None:
                counts["already_notified"] += 1
                continue
            if mail.enqueue(conn, dedupe_key=key, to=address, template="ad_password_expiry", context=context,
                            not_before=interval.end):
                counts["notices_queued"] += 1
        for key in ("notices_queued", "already_notified", "expiring"):
            counts.setdefault(key, 0)
        return counts, "live", None, None

    return _for_each_directory(panel_db, interval, params, log, "send_password_expiry_notices", work)


# -- 4. SyncStaffUsersWork --------------------------------------------------------------------------

def sync_staff_users(panel_db, interval, params, log) -> dict:
    """Sync employee’s data linked to AD users."""
    from panelflow.hooks.active_directory import (UF_ACCOUNTDISABLE, USER_FILTER, escape_filter_value,
                                                  guid_filter_value)

    def work(conn, ad, d, report):
        counts: Counter = Counter()
        staff = conn.execute("SELECT id, employee_id, ad_object_guid, ad_sam_account_name FROM ad_staff"
                             " WHERE directory_id = %s ORDER BY id", (d.id,)).fetchall()
        nc = ad.root_dse()["defaultNamingContext"]       # staff accounts may live outside the hosted OUs
        by_guid, by_sam = {}, {}
        for start in range(0, len(staff), GUID_BATCH):
            chunk = staff[start:start + GUID_BATCH]
            terms = [f"(objectGUID={guid_filter_value(g)})" for _, _, g, _ in chunk if g]
            terms += [f"(sAMAccountName={escape_filter_value(s)})" for _, _, g, s in chunk if not g and s]
            for entry in ad.search(nc, f"(&{USER_FILTER}(|{''.join(terms)}))", STAFF_ATTRIBUTES):
                counts["users_read"] += 1
                try:
                    guid = entry.guid()
                    values = (entry.text("sAMAccountName"), entry.text("displayName"), entry.text("givenName"),
                              entry.text("sn"), entry.text("mail"), entry.text("telephoneNumber"),
                              entry.text("mobile"), entry.text("title"), entry.text("department"),
                              entry.text("company"), entry.text("physicalDeliveryOfficeName"),
                              entry.text("employeeID"),
                              not ((entry.int("userAccountControl") or 0) & UF_ACCOUNTDISABLE))
                except ValueError as exc:
                    report.skip("unreadable user", f"directory {d.name}: {entry.dn}: {exc}")
                    continue
                by_guid[guid] = (guid, *values)
                if values[0]:
                    by_sam[values[0].lower()] = (guid, *values)
        rows, unmatched = [], []
        for staff_id, employee_id, guid, sam in staff:
            found = by_guid.get(guid) if guid else by_sam.get((sam or "").lower())
            if found is None:
                unmatched.append(staff_id)
                report.skip("no AD user for the employee's link",
                            f"directory {d.name}: employee {employee_id} ({guid or sam})")
                continue
            rows.append((staff_id, *found))
        conn.execute("CREATE TEMP TABLE _ad_staff_in (staff_id bigint, object_guid uuid, sam text, display_name text,"
                     " first_name text, last_name text, mail text, phone text, mobile text, title text,"
                     " department text, company text, office text, employee_number text, account_enabled boolean)"
                     " ON COMMIT DROP")
        _copy(conn, "_ad_staff_in", ("staff_id", "object_guid", "sam", "display_name", "first_name", "last_name",
                                     "mail", "phone", "mobile", "title", "department", "company", "office",
                                     "employee_number", "account_enabled"), rows)
        counts["staff_written"] += conn.execute("""
            UPDATE ad_staff s SET ad_object_guid = i.object_guid, ad_sam_account_name = i.sam,
                ad_user_id = u.id, display_name = i.display_name, first_name = i.first_name,
                last_name = i.last_name, mail = i.mail, phone = i.phone, mobile = i.mobile, title = i.title,
                department = i.department, company = i.company, office = i.office,
                employee_number = i.employee_number, account_enabled = i.account_enabled,
                link_status = 'linked', synced_at = %(at)s
            FROM _ad_staff_in i
            LEFT JOIN ad_users u ON u.directory_id = %(d)s AND u.object_guid = i.object_guid AND NOT u.deleted
            WHERE s.id = i.staff_id
              AND (s.ad_object_guid, s.ad_sam_account_name, s.ad_user_id, s.display_name, s.first_name, s.last_name,
                   s.mail, s.phone, s.mobile, s.title, s.department, s.company, s.office, s.employee_number,
                   s.account_enabled, s.link_status)
                  IS DISTINCT FROM (i.object_guid, i.sam, u.id, i.display_name, i.first_name, i.last_name, i.mail,
                   i.phone, i.mobile, i.title, i.department, i.company, i.office, i.employee_number,
                   i.account_enabled, 'linked')""", {"at": interval.end, "d": d.id}).rowcount
        counts["staff_unmatched"] += conn.execute(
            "UPDATE ad_staff SET link_status = 'unmatched', ad_user_id = NULL, synced_at = %s"
            " WHERE id = ANY(%s::bigint[]) AND link_status <> 'unmatched'", (interval.end, unmatched)).rowcount
        counts["staff_linked"] += len(rows)
        counts.setdefault("staff_written", 0)
        return counts, "live", None, None

    return _for_each_directory(panel_db, interval, params, log, "sync_staff_users", work)


# -- 5. RDSSyncWork -----------------------------------------------------------------------------------

def sync_rds_users(panel_db, interval, params, log) -> dict:
    """Get AD users with RDS service and sync into database.

    RDS is a group membership: the organisation's ``rds_group_dn``, else the directory's, else the
    domain's built-in Remote Desktop Users (what grants "Allow log on through Remote Desktop
    Services" on a session host). Members are read with LDAP_MATCHING_RULE_IN_CHAIN, so nested
    groups count as they do for the logon right."""
    from panelflow.hooks.active_directory import (MATCHING_RULE_IN_CHAIN, UF_ACCOUNTDISABLE, USER_FILTER,
                                                  dn_key, escape_filter_value)

    def work(conn, ad, d, report):
        counts: Counter = Counter()
        default = d.rds_group_dn or ad.builtin_rds_group_dn()
        orgs = conn.execute("SELECT id, coalesce(rds_group_dn, %s) FROM ad_organisations WHERE directory_id = %s"
                            " AND NOT deleted ORDER BY id", (default, d.id)).fetchall()
        groups: dict[str, str] = {}
        for _, group in orgs:
            groups.setdefault(dn_key(group), group)
        rows, evaluated = [], []
        for key, group in groups.items():
            if ad.get(group, ["objectGUID"]) is None:
                report.skip("RDS group does not exist", f"directory {d.name}: {group}")
                continue
            evaluated.append(key)
            counts["groups_read"] += 1
            flt = f"(&{USER_FILTER}(memberOf:{MATCHING_RULE_IN_CHAIN}:={escape_filter_value(group)}))"
            for entry in ad.search(d.base_dn, flt, ["objectGUID", "userAccountControl"]):
                counts["members_read"] += 1
                try:
                    rows.append((entry.guid(), key, group,
                                 not ((entry.int("userAccountControl") or 0) & UF_ACCOUNTDISABLE)))
                except ValueError as exc:
                    report.skip("unreadable user", f"directory {d.name}: {entry.dn}: {exc}")
        evaluated_orgs = [oid for oid, group in orgs if dn_key(group) in evaluated]
        conn.execute("CREATE TEMP TABLE _ad_rds_in (object_guid uuid, group_key text, group_dn text, enabled boolean)"
                     " ON COMMIT DROP")
        _copy(conn, "_ad_rds_in", ("object_guid", "group_key", "group_dn", "enabled"), rows)
        conn.execute("CREATE TEMP TABLE _ad_rds_org (id bigint, group_key text) ON COMMIT DROP")
        _copy(conn, "_ad_rds_org", ("id", "group_key"), [(oid, dn_key(g)) for oid, g in orgs])
        # Only the group of the user's own organisation counts.
        conn.execute("""
            CREATE TEMP TABLE _ad_rds_eff ON COMMIT DROP AS
            SELECT DISTINCT ON (u.id) u.id AS user_id, i.group_dn, i.enabled
            FROM _ad_rds_in i
            JOIN ad_users u ON u.directory_id = %s AND u.object_guid = i.object_guid AND NOT u.deleted
            JOIN _ad_rds_org o ON o.id = u.organisation_id AND o.group_key = i.group_key
            ORDER BY u.id""", (d.id,))
        counts["unknown_users"] += conn.execute(
            "SELECT count(DISTINCT object_guid) FROM _ad_rds_in i WHERE NOT EXISTS (SELECT 1 FROM ad_users u"
            " WHERE u.directory_id = %s AND u.object_guid = i.object_guid)", (d.id,)).fetchone()[0]
        counts["rds_written"] += conn.execute("""
            INSERT INTO ad_rds_users AS r (user_id, directory_id, rds_group_dn, account_enabled, since, synced_at)
            SELECT user_id, %(d)s, group_dn, enabled, %(at)s, %(at)s FROM _ad_rds_eff
            ON CONFLICT (user_id) DO UPDATE SET rds_group_dn = EXCLUDED.rds_group_dn,
                account_enabled = EXCLUDED.account_enabled,
                since = CASE WHEN r.removed_at IS NULL THEN r.since ELSE EXCLUDED.since END,
                removed_at = NULL, synced_at = EXCLUDED.synced_at
            WHERE (r.rds_group_dn, r.account_enabled, r.removed_at IS NULL)
                  IS DISTINCT FROM (EXCLUDED.rds_group_dn, EXCLUDED.account_enabled, true)""",
                                          {"d": d.id, "at": interval.end}).rowcount
        counts["rds_removed"] += conn.execute("""
            UPDATE ad_rds_users r SET removed_at = %(at)s, synced_at = %(at)s
            FROM ad_users u
            WHERE r.directory_id = %(d)s AND r.removed_at IS NULL AND u.id = r.user_id
              AND (u.deleted OR u.organisation_id = ANY(%(orgs)s::bigint[]) OR u.organisation_id IS NULL)
              AND NOT EXISTS (SELECT 1 FROM _ad_rds_eff e WHERE e.user_id = r.user_id)""",
                                          {"d": d.id, "at": interval.end, "orgs": evaluated_orgs}).rowcount
        conn.execute("""
            UPDATE ad_users u SET rds_enabled = EXISTS (SELECT 1 FROM ad_rds_users r WHERE r.user_id = u.id
                                                        AND r.removed_at IS NULL)
            WHERE u.directory_id = %s AND u.rds_enabled IS DISTINCT FROM EXISTS (
                SELECT 1 FROM ad_rds_users r WHERE r.user_id = u.id AND r.removed_at IS NULL)""", (d.id,))
        counts["rds_users"] += conn.execute("SELECT count(*) FROM ad_rds_users WHERE directory_id = %s"
                                            " AND removed_at IS NULL", (d.id,)).fetchone()[0]
        return counts, "live", None, None

    return _for_each_directory(panel_db, interval, params, log, "sync_rds_users", work)


# -- 6. GroupActionWorkAD: extended data and services -----------------------------------------------

def _changed_known_users(conn, ad, d: Directory, mark: _Watermark, attributes, synced_column: str, counts: Counter):
    """Users changed since the step's watermark, then the known users the step has never read
    (created by the user sync after the watermark passed them) — by GUID, in batches."""
    from panelflow.hooks.active_directory import USER_FILTER, guid_filter_value

    seen: set[bytes] = set()
    for entry in ad.changed_since(d.base_dn, USER_FILTER, mark.since, attributes):
        raw = entry.raw("objectGUID")
        if raw:
            seen.add(raw[0])
        counts["users_read"] += 1
        yield entry
    if mark.full:
        return
    pending = [g for (g,) in conn.execute(
        f"SELECT object_guid FROM ad_users WHERE directory_id = %s AND NOT deleted AND {synced_column} IS NULL"
        " ORDER BY id LIMIT %s", (d.id, CATCH_UP_LIMIT))]
    pending = [g for g in pending if g.bytes_le not in seen]
    for start in range(0, len(pending), GUID_BATCH):
        terms = "".join(f"(objectGUID={guid_filter_value(g)})" for g in pending[start:start + GUID_BATCH])
        for entry in ad.search(d.base_dn, f"(&{USER_FILTER}(|{terms}))", attributes):
            counts["users_read"] += 1
            counts["users_caught_up"] += 1
            yield entry


def extended_data_of(entry) -> dict[str, Any]:
    """The extended attributes of one user as stored in ``ad_users.extended`` (times as ISO-8601)."""
    out: dict[str, Any] = {}
    for name, kind in EXTENDED_ATTRIBUTES.items():
        if not entry.has(name):
            continue
        if kind == "filetime":
            value = entry.filetime(name)
            out[name] = value.isoformat() if value else None
        elif kind == "int":
            out[name] = entry.int(name)
        else:
            out[name] = entry.text(name)
    return out


def update_ad_extended_data(panel_db, interval, params, log) -> dict:
    """Update AD Organizations and AD Users extended data into database"""

    def work(conn, ad, d, report):
        counts: Counter = Counter()
        mark = _Watermark(conn, ad, d, STEP_EXTENDED, interval, params)
        rows = []
        for entry in _changed_known_users(conn, ad, d, mark, ["objectGUID", *EXTENDED_ATTRIBUTES], "extended_synced_at",
                                          counts):
            try:
                rows.append((entry.guid(), Jsonb(extended_data_of(entry))))
            except ValueError as exc:
                report.skip("unreadable user", f"directory {d.name}: {entry.dn}: {exc}")
        conn.execute("CREATE TEMP TABLE _ad_ext_in (object_guid uuid, extended jsonb) ON COMMIT DROP")
        _copy(conn, "_ad_ext_in", ("object_guid", "extended"), rows)
        counts["users_written"] += conn.execute("""
            UPDATE ad_users u SET extended = i.extended, extended_synced_at = %s
            FROM _ad_ext_in i WHERE u.directory_id = %s AND u.object_guid = i.object_guid
              AND (u.extended IS DISTINCT FROM i.extended OR u.extended_synced_at IS NULL)""",
                                                (interval.end, d.id)).rowcount
        counts["organisations_written"] += conn.execute("""
            WITH stats AS (
                SELECT o.id, jsonb_build_object(
                    'users', count(u.id),
                    'enabled_users', count(u.id) FILTER (WHERE u.enabled),
                    'disabled_users', count(u.id) FILTER (WHERE NOT u.enabled),
                    'locked_users', count(u.id) FILTER (WHERE u.locked),
                    'mail_users', count(u.id) FILTER (WHERE u.mail IS NOT NULL),
                    'mailboxes', count(u.id) FILTER (WHERE EXISTS (SELECT 1 FROM ad_user_services s
                                                     WHERE s.user_id = u.id AND s.service = 'mailbox')),
                    'rds_users', count(u.id) FILTER (WHERE u.rds_enabled),
                    'password_never_expires', count(u.id) FILTER (WHERE u.password_never_expires),
                    'groups', (SELECT count(*) FROM ad_groups g WHERE g.organisation_id = o.id AND NOT g.deleted),
                    'last_logon', max((u.extended ->> 'lastLogonTimestamp')::timestamptz)) AS counts
                FROM ad_organisations o
                LEFT JOIN ad_users u ON u.organisation_id = o.id AND NOT u.deleted
                WHERE o.directory_id = %(d)s AND NOT o.deleted
                GROUP BY o.id)
            UPDATE ad_organisations o SET extended = o.extended || s.counts, extended_updated_at = %(at)s
            FROM stats s WHERE o.id = s.id AND o.extended IS DISTINCT FROM o.extended || s.counts""",
                                                        {"d": d.id, "at": interval.end}).rowcount
        mark.save()
        return counts, mark.mode, mark.since, mark.usn_now

    return _for_each_directory(panel_db, interval, params, log, STEP_EXTENDED, work)


def services_of(entry) -> dict[str, dict]:
    """The services one user has as its attributes show them → {service: detail}.

    - ``mailbox``: an Exchange mailbox — ``homeMDB`` (on-premises database) or ``msExchMailboxGuid``,
      or a mailbox kind in ``msExchRecipientTypeDetails`` (remote/Exchange Online ones included);
    - ``mail_user``: mail-enabled without a mailbox — a ``targetAddress`` (forwarding to an external
      address), or an SMTP ``proxyAddresses``/``mail`` address;
    - ``vpn``: ``msNPAllowDialin`` TRUE (Network Policy Server's "Allow access" for dial-in/VPN);
    - ``lync``: ``msRTCSIP-UserEnabled`` TRUE (Lync/Skype for Business on-premises).

    RDS is a group membership (RDSSyncWork), not an attribute. SharePoint access is not in AD
    (site permissions live in SharePoint), so it is not derived here.
    """
    out: dict[str, dict] = {}
    proxies = entry.texts("proxyAddresses")
    primary = next((p[5:] for p in proxies if p.startswith("SMTP:")), None) or entry.text("mail")
    kind = entry.int("msExchRecipientTypeDetails")
    mailbox_guid = entry.raw("msExchMailboxGuid")
    if entry.has("homeMDB") or mailbox_guid or (kind in MAILBOX_TYPES):
        out["mailbox"] = {"type": MAILBOX_TYPES.get(kind, "UserMailbox"), "address": primary,
                          "database": entry.text("homeMDB"),
                          "aliases": sorted(p[5:] for p in proxies if p.startswith("smtp:"))}
    elif entry.has("targetAddress") or primary:
        out["mail_user"] = {"address": primary, "target": entry.text("targetAddress")}
    if entry.bool("msNPAllowDialin"):
        out["vpn"] = {}
    if entry.bool("msRTCSIP-UserEnabled"):
        out["lync"] = {"sip": entry.text("msRTCSIP-PrimaryUserAddress")}
    return out


def sync_ad_user_services(panel_db, interval, params, log) -> dict:
    """Sync AD Users Services Detail"""

    def work(conn, ad, d, report):
        counts: Counter = Counter()
        mark = _Watermark(conn, ad, d, STEP_SERVICES, interval, params)
        read, rows = [], []
        for entry in _changed_known_users(conn, ad, d, mark, SERVICE_ATTRIBUTES, "services_synced_at", counts):
            try:
                guid = entry.guid()
                services = services_of(entry)
            except ValueError as exc:
                report.skip("unreadable user", f"directory {d.name}: {entry.dn}: {exc}")
                continue
            read.append((guid,))
            rows += [(guid, service, Jsonb(detail)) for service, detail in services.items()]
        conn.execute("CREATE TEMP TABLE _ad_svc_read (object_guid uuid) ON COMMIT DROP")
        conn.execute("CREATE TEMP TABLE _ad_svc_in (object_guid uuid, service text, detail jsonb) ON COMMIT DROP")
        _copy(conn, "_ad_svc_read", ("object_guid",), read)
        _copy(conn, "_ad_svc_in", ("object_guid", "service", "detail"), rows)
        removed = conn.execute("""
            DELETE FROM ad_user_services s USING ad_users u, _ad_svc_read r
            WHERE u.directory_id = %s AND u.object_guid = r.object_guid AND s.user_id = u.id AND s.service <> 'rds'
              AND NOT EXISTS (SELECT 1 FROM _ad_svc_in i WHERE i.object_guid = r.object_guid
                                                          AND i.service = s.service)""", (d.id,)).rowcount
        written = conn.execute("""
            INSERT INTO ad_user_services AS s (user_id, service, detail, since, synced_at)
            SELECT u.id, i.service, i.detail, %(at)s, %(at)s FROM _ad_svc_in i
            JOIN ad_users u ON u.directory_id = %(d)s AND u.object_guid = i.object_guid
            ON CONFLICT (user_id, service) DO UPDATE SET detail = EXCLUDED.detail, synced_at = EXCLUDED.synced_at
            WHERE s.detail IS DISTINCT FROM EXCLUDED.detail""", {"d": d.id, "at": interval.end}).rowcount
        conn.execute("UPDATE ad_users u SET services_synced_at = %s FROM _ad_svc_read r WHERE u.directory_id = %s"
                     " AND u.object_guid = r.object_guid", (interval.end, d.id))
        # RDS follows ad_users.rds_enabled (RDSSyncWork): group changes never touch the user's uSNChanged.
        removed += conn.execute("""
            DELETE FROM ad_user_services s USING ad_users u
            WHERE s.user_id = u.id AND u.directory_id = %s AND s.service = 'rds'
              AND (NOT u.rds_enabled OR u.deleted)""", (d.id,)).rowcount
        written += conn.execute("""
            INSERT INTO ad_user_services (user_id, service, detail, since, synced_at)
            SELECT u.id, 'rds', jsonb_build_object('group', r.rds_group_dn), %(at)s, %(at)s
            FROM ad_users u JOIN ad_rds_users r ON r.user_id = u.id AND r.removed_at IS NULL
            WHERE u.directory_id = %(d)s AND u.rds_enabled AND NOT u.deleted
            ON CONFLICT (user_id, service) DO NOTHING""", {"d": d.id, "at": interval.end}).rowcount
        counts["services_written"] += written
        counts["services_removed"] += removed
        mark.save()
        return counts, mark.mode, mark.since, mark.usn_now

    return _for_each_directory(panel_db, interval, params, log, STEP_SERVICES, work)
