"""SyncADUsersWork: organisations, users, groups (with members) and UPN suffixes into the panel DB.

Incremental by ``uSNChanged`` (why not DirSync: see the hook's module doc): a pass reads only the
objects changed since the watermark, and writes only rows whose values differ (``written`` counts
real changes). Deletions come from the tombstones; a full pass — the first, after the DC or its
database changed (``invocationId``), or every ``ad_full_sync_hours`` (24) — reads everything and
marks what it did not see as deleted, which also catches objects moved out of the managed subtree
(no search under ``base_dn`` sees those, not even a tombstone search). A renamed or moved OU changes
its users' DNs without touching their ``uSNChanged``, so the users under a changed OU are read again.

Organisations are the OUs directly under the directory's ``base_dn``. SyncLockedUsersWork runs the
same user pass (:func:`user_pass`) before its lock states.
"""

from __future__ import annotations

import uuid
from collections import Counter

from panelflow.hooks.active_directory import (
    GROUP_FILTER,
    OU_FILTER,
    UF_ACCOUNTDISABLE,
    UF_DONT_EXPIRE_PASSWD,
    UF_LOCKOUT,
    USER_FILTER,
    dn_key,
)
from panelflow.step import StepReport

from ._backend import Directory, Watermark, copy, mark_unseen, org_ids, organisation_of, sync_each_directory

STEP_USERS = "sync_ad_users"

USER_ATTRIBUTES = (
    "objectGUID", "objectSid", "sAMAccountName", "userPrincipalName", "cn", "displayName", "givenName", "sn",
    "mail", "userAccountControl", "msDS-User-Account-Control-Computed", "lockoutTime", "pwdLastSet",
    "msDS-UserPasswordExpiryTimeComputed", "whenCreated", "whenChanged", "uSNChanged",
)
OU_ATTRIBUTES = ("objectGUID", "ou", "description", "uPNSuffixes", "whenChanged", "uSNChanged")
GROUP_ATTRIBUTES = ("objectGUID", "objectSid", "sAMAccountName", "cn", "mail", "description", "groupType",
                    "whenChanged", "uSNChanged", "member")

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
_GROUP_COLUMNS = ("organisation_id", "object_guid", "object_sid", "sam_account_name", "cn", "dn", "mail",
                  "description", "group_type", "when_changed", "usn_changed")


def _upsert(table: str, source: str, columns: tuple[str, ...], returning: str = "") -> str:
    """An object table's upsert from its temp table: a row is written only when a value differs
    (``written`` counts real changes), and an object seen again is no longer deleted."""
    return f"""
INSERT INTO {table} AS t (directory_id, {', '.join(columns)}, synced_at)
SELECT %(d)s, {', '.join(columns)}, %(at)s FROM {source}
ON CONFLICT (directory_id, object_guid) DO UPDATE SET
    {', '.join(f'{c} = EXCLUDED.{c}' for c in columns if c != 'object_guid')},
    deleted = false, deleted_at = NULL, synced_at = EXCLUDED.synced_at
WHERE ({', '.join(f't.{c}' for c in columns)}, t.deleted)
      IS DISTINCT FROM ({', '.join(f'EXCLUDED.{c}' for c in columns)}, false)
{returning}"""


_USER_UPSERT = _upsert("ad_users", "_ad_users_in", _USER_COLUMNS, "RETURNING (xmax = 0) AS inserted")
_GROUP_UPSERT = _upsert("ad_groups", "_ad_groups_in", _GROUP_COLUMNS)


def _user_row(entry, org_id: int) -> tuple:
    """The ``ad_users`` columns of one entry (raises ValueError for a value that does not parse)."""
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
    known = {guid: dn for guid, dn in conn.execute(
        "SELECT object_guid, dn FROM ad_organisations WHERE directory_id = %s", (d.id,))}
    rows, reread, seen = [], [], []
    for entry in ad.changed_since(d.base_dn, OU_FILTER, since, OU_ATTRIBUTES):
        counts["ous_read"] += 1
        top = organisation_of(entry.dn, d.base_dn)
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
    copy(conn, "_ad_ous_in", ("object_guid", "dn", "name", "description", "upn_suffixes", "when_changed",
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
        counts["organisations_deleted"] += mark_unseen(conn, "ad_organisations", d, at, seen)
    return reread


def _user_entries(ad, d: Directory, since, reread: list[str]):
    """The changed users, then those under OUs that changed (each GUID once)."""
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


def _sync_users(conn, ad, d: Directory, mark: Watermark, report: StepReport, counts: Counter,
                reread: list[str]) -> None:
    orgs = org_ids(conn, d)
    seen: list[tuple] = []
    rows: list[tuple] = []

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
        org_dn = organisation_of(entry.dn, d.base_dn)
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
    copy(conn, "_ad_users_in", _USER_COLUMNS, rows)
    results = conn.execute(_USER_UPSERT, {"d": d.id, "at": mark.at}).fetchall()
    counts["users_written"] += len(results)
    counts["users_inserted"] += sum(1 for (inserted,) in results if inserted)
    if mark.full:
        counts["users_deleted"] += mark_unseen(conn, "ad_users", d, mark.at, seen)


def _sync_groups(conn, ad, d: Directory, mark: Watermark, report: StepReport, counts: Counter) -> None:
    from ldap3.protocol.microsoft import extended_dn_control

    orgs = org_ids(conn, d)
    groups, members, seen = [], [], []
    for entry in ad.changed_since(d.base_dn, GROUP_FILTER, mark.since, GROUP_ATTRIBUTES,
                                  controls=[extended_dn_control(criticality=True, hex_format=False)]):
        counts["groups_read"] += 1
        try:
            guid = entry.guid()
            if guid is None:
                raise ValueError("objectGUID: missing")
            seen.append((guid,))
            org_dn = organisation_of(entry.dn, d.base_dn)
            groups.append((orgs.get(dn_key(org_dn)) if org_dn else None, guid, entry.sid(),
                           entry.text("sAMAccountName"), entry.text("cn"), entry.dn, entry.text("mail"),
                           entry.text("description"), entry.int("groupType"), entry.time("whenChanged"),
                           entry.int("uSNChanged")))
            listed = ad.members_with_guids(entry.dn) if entry.partial("member") else entry.extended_dns("member")
            members += [(guid, member, dn) for member, dn in listed]
        except ValueError as exc:
            report.skip("unreadable group", f"directory {d.name}: {entry.dn}: {exc}")
            counts["groups_skipped"] += 1
    conn.execute("CREATE TEMP TABLE _ad_groups_in (organisation_id bigint, object_guid uuid, object_sid text,"
                 " sam_account_name text, cn text, dn text, mail text, description text, group_type integer,"
                 " when_changed timestamptz, usn_changed bigint) ON COMMIT DROP")
    conn.execute("CREATE TEMP TABLE _ad_members_in (group_guid uuid, member_guid uuid, member_dn text) ON COMMIT DROP")
    copy(conn, "_ad_groups_in", _GROUP_COLUMNS, groups)
    copy(conn, "_ad_members_in", ("group_guid", "member_guid", "member_dn"), members)
    counts["groups_written"] += conn.execute(_GROUP_UPSERT, {"d": d.id, "at": mark.at}).rowcount
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
        counts["groups_deleted"] += mark_unseen(conn, "ad_groups", d, mark.at, seen)


def _sync_tombstones(conn, ad, d: Directory, mark: Watermark, counts: Counter) -> None:
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


def _sync_upn_suffixes(conn, ad, d: Directory, mark: Watermark, counts: Counter) -> None:
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
    copy(conn, "_ad_upn_in", ("suffix", "source", "organisation_id"), unique.values())
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


def user_pass(conn, ad, d: Directory, interval, params, report: StepReport, *, periodic_full: bool) -> tuple:
    mark = Watermark(conn, ad, d, STEP_USERS, interval, params, periodic_full=periodic_full)
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
        counts, mark = user_pass(conn, ad, d, interval, params, report, periodic_full=True)
        return counts, mark.mode, mark.since, mark.usn_now

    return sync_each_directory(panel_db, interval, log, STEP_USERS, work)

