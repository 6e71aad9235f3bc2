"""GroupActionWorkAD steps 2 and 3: the users' extended data and the services their attributes show.

Both are incremental by ``uSNChanged`` with their own watermark, and also read back (by GUID, in
batches) the known users they have never read: users the user sync created after their watermark
had passed them.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from psycopg.types.json import Jsonb

from panelflow.hooks.active_directory import USER_FILTER

from ._backend import GUID_BATCH, Directory, Watermark, chunks, copy, guid_or, sync_each_directory

STEP_EXTENDED = "update_ad_extended_data"
STEP_SERVICES = "sync_ad_user_services"
CATCH_UP_LIMIT = 20_000    # users read back per run because a step has never read them

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

# msExchRecipientTypeDetails values that are mailboxes (Exchange's RecipientTypeDetails flags).
MAILBOX_TYPES = {1: "UserMailbox", 2: "LinkedMailbox", 4: "SharedMailbox", 16: "RoomMailbox", 32: "EquipmentMailbox",
                 2147483648: "RemoteUserMailbox", 8589934592: "RemoteRoomMailbox",
                 17179869184: "RemoteEquipmentMailbox", 34359738368: "RemoteSharedMailbox"}

def _changed_known_users(conn, ad, d: Directory, mark: Watermark, attributes, synced_column: str, counts: Counter):
    """Users changed since the step's watermark, then the known users the step has never read
    (created by the user sync after the watermark passed them) — by GUID, in batches."""
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
    for chunk in chunks(pending, GUID_BATCH):
        for entry in ad.search(d.base_dn, f"(&{USER_FILTER}{guid_or(chunk)})", attributes):
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
        mark = Watermark(conn, ad, d, STEP_EXTENDED, interval, params)
        rows = []
        for entry in _changed_known_users(conn, ad, d, mark, ["objectGUID", *EXTENDED_ATTRIBUTES], "extended_synced_at",
                                          counts):
            try:
                rows.append((entry.guid(), Jsonb(extended_data_of(entry))))
            except ValueError as exc:
                report.skip("unreadable user", f"directory {d.name}: {entry.dn}: {exc}")
        conn.execute("CREATE TEMP TABLE _ad_ext_in (object_guid uuid, extended jsonb) ON COMMIT DROP")
        copy(conn, "_ad_ext_in", ("object_guid", "extended"), rows)
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

    return sync_each_directory(panel_db, interval, log, STEP_EXTENDED, work)


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
        mark = Watermark(conn, ad, d, STEP_SERVICES, interval, params)
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
        copy(conn, "_ad_svc_read", ("object_guid",), read)
        copy(conn, "_ad_svc_in", ("object_guid", "service", "detail"), rows)
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

    return sync_each_directory(panel_db, interval, log, STEP_SERVICES, work)
