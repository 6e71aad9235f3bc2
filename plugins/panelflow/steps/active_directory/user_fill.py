"""ProvisioningWork step 46: an AD user's empty ``mail`` and ``employeeID`` filled from what is known.

Address books, Exchange and line-of-business apps read ``mail`` and ``employeeID``; accounts
created outside the panel (or before it set them) leave them empty. Only an **empty** attribute is
ever written — a value someone set, however odd, is theirs — so a rerun finds nothing to do. The
values come from where they are already authoritative:

- ``mail``: the user's primary SMTP address in its own ``proxyAddresses`` (``SMTP:…``), else the
  primary address of the panel's Exchange mailbox with the user's UPN (``exchange_mailboxes``,
  not deleted);
- ``employeeID``: the panel employee linked to the user (``ad_staff``: by the user's row or GUID).

A user for whom nothing is known is counted (``no_value``), not guessed at. Every write is
recorded in ``ad_user_fills`` (0036) with where the value came from. Bounded by
``fill_users_per_run`` (1000) writes per directory; the rest follow next run.
"""

from __future__ import annotations

from panelflow.hooks.active_directory import USER_FILTER, ActiveDirectoryRejected
from panelflow.step import StepReport

from ._backend import Directory, copy, each_directory

EMPTY_FILTER = f"(&{USER_FILTER}(|(!(mail=*))(!(employeeID=*))))"
FILL_ATTRIBUTES = ("objectGUID", "userPrincipalName", "mail", "employeeID", "proxyAddresses")

# What the panel knows for each read user: its Exchange mailbox's address and its linked employee.
_PANEL_VALUES = """
SELECT i.object_guid,
       (SELECT m.primary_smtp_address FROM exchange_mailboxes m
        WHERE lower(m.user_principal_name) = lower(i.upn) AND m.status NOT IN ('deleted', 'failed', 'pending')
        ORDER BY m.id LIMIT 1) AS mailbox_address,
       (SELECT s.employee_id::text FROM ad_staff s LEFT JOIN ad_users u ON u.id = s.ad_user_id
        WHERE s.directory_id = %(d)s AND (u.object_guid = i.object_guid OR s.ad_object_guid = i.object_guid)
        ORDER BY s.id LIMIT 1) AS employee_id
FROM _fill_in i
"""

_RECORD_FILLS = """
INSERT INTO ad_user_fills (directory_id, object_guid, attribute, value, source, filled_at)
SELECT %(d)s, object_guid, attribute, value, source, %(at)s FROM _fills_in
ON CONFLICT (directory_id, object_guid, attribute) DO NOTHING
"""


def own_primary_address(entry) -> str | None:
    """The primary SMTP address the user's own ``proxyAddresses`` give (``SMTP:`` upper case)."""
    return next((p[5:] for p in entry.texts("proxyAddresses") if p.startswith("SMTP:") and "@" in p), None)


def fill_empty_ad_user_email_and_employee_id(panel_db, interval, params=None, log=None) -> dict:
    """Step 46 of ProvisioningWork: fill empty ``mail``/``employeeID`` (see the module's doc)."""
    params = params or {}
    per_run = int(params.get("fill_users_per_run", 1000))
    report = StepReport().zero("users_read", "mail_filled", "employee_id_filled", "no_value")

    def work(conn, d: Directory, hook) -> None:
        entries = {}
        for entry in hook.search(d.base_dn, EMPTY_FILTER, FILL_ATTRIBUTES):
            try:
                guid = entry.guid()
                entries[guid] = entry
            except ValueError as exc:
                report.skip("unreadable user", f"directory {d.name}: {entry.dn}: {exc}")
        report.add("users_read", len(entries))
        with conn.transaction():
            conn.execute("CREATE TEMP TABLE _fill_in (object_guid uuid PRIMARY KEY, upn text) ON COMMIT DROP")
            copy(conn, "_fill_in", ("object_guid", "upn"),
                 ((g, e.text("userPrincipalName")) for g, e in entries.items()))
            known = {g: (mailbox, employee) for g, mailbox, employee in conn.execute(_PANEL_VALUES, {"d": d.id})}
        writes, fills = 0, []
        for guid, entry in sorted(entries.items(), key=lambda kv: kv[1].dn):
            if writes >= per_run:
                report.add("users_deferred")
                continue
            mailbox, employee = known.get(guid, (None, None))
            changes, sources = {}, {}
            if not entry.has("mail"):
                own = own_primary_address(entry)
                value, source = (own, "proxyAddresses") if own else (mailbox, "exchange_mailboxes")
                if value:
                    changes["mail"], sources["mail"] = value, source
            if not entry.has("employeeID") and employee:
                changes["employeeID"], sources["employeeID"] = employee, "ad_staff"
            if not changes:
                report.add("no_value")
                continue
            try:
                hook.replace_attributes(entry.dn, changes)
            except ActiveDirectoryRejected as exc:
                report.skip(f"not written: {exc}", entry.dn)
                continue
            writes += 1
            for attribute, value in changes.items():
                fills.append((guid, attribute, value, sources[attribute]))
                report.add("mail_filled" if attribute == "mail" else "employee_id_filled")
            if log is not None:
                log.info("filled %s of %s", ", ".join(changes), entry.dn)
        with conn.transaction():
            conn.execute("CREATE TEMP TABLE _fills_in (object_guid uuid, attribute text, value text, source text)"
                         " ON COMMIT DROP")
            copy(conn, "_fills_in", ("object_guid", "attribute", "value", "source"), fills)
            conn.execute(_RECORD_FILLS, {"d": d.id, "at": interval.end})

    each_directory(panel_db, report, log, work)
    return report.as_dict()
