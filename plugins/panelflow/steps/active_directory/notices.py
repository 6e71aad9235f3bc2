"""UserPasswordExpiryNotificationWork: one e-mail per user and expiry, before the password expires.

A live read of ``msDS-UserPasswordExpiryTimeComputed`` (it follows a policy change without a write
to the user); the panel's ``ad_users.password_expires_at`` follows it. Due dates are measured from
``interval.end``.
"""

from __future__ import annotations

from collections import Counter
from datetime import timedelta, timezone

from panelflow.hooks.active_directory import (
    MATCHING_RULE_BIT_AND,
    UF_ACCOUNTDISABLE,
    UF_DONT_EXPIRE_PASSWD,
    USER_FILTER,
    dn_key,
)
from panelflow.services import outbox as mail

from ._backend import copy, organisation_of, sync_each_directory

NOTICE_DAYS = 14

def send_password_expiry_notices(panel_db, interval, params, log) -> dict:
    """Send notification to AD users whose password is about to expire."""
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
            org_dn = organisation_of(entry.dn, d.base_dn)
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
        copy(conn, "_ad_expiry", ("object_guid", "expires"), expiries)
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

    return sync_each_directory(panel_db, interval, log, "send_password_expiry_notices", work)

