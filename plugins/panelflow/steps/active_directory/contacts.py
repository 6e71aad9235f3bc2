"""SyncFromBackendWork step 3: the mail contacts of every directory into ``ad_contacts`` (0036).

A contact (``objectClass=contact``) is an address book entry for someone outside the organisation;
the panel lists them per organisation (the OU directly under ``base_dn`` holding them). The pass
follows the user sync's rules (see ``sync``): incremental by ``uSNChanged`` with its own
watermark, deletions from the tombstones, and a periodic full pass that marks what it did not see
as deleted (a contact moved out of the managed subtree leaves no tombstone there). A row is
written only when a value differs, so a rerun writes nothing.
"""

from __future__ import annotations

from collections import Counter

from panelflow.hooks.active_directory import dn_key

from ._backend import Directory, Watermark, copy, mark_unseen, org_ids, organisation_of, sync_each_directory

STEP_CONTACTS = "sync_ad_contacts"
CONTACT_FILTER = "(objectClass=contact)"
CONTACT_ATTRIBUTES = ("objectGUID", "cn", "displayName", "givenName", "sn", "mail", "targetAddress", "company",
                      "telephoneNumber", "whenChanged", "uSNChanged")
_COLUMNS = ("organisation_id", "object_guid", "dn", "cn", "display_name", "given_name", "surname", "mail",
            "target_address", "company", "telephone_number", "when_changed", "usn_changed")
_TYPES = ("bigint", "uuid", "text", "text", "text", "text", "text", "text", "text", "text", "text", "timestamptz",
          "bigint")

_UPSERT = f"""
INSERT INTO ad_contacts AS t (directory_id, {', '.join(_COLUMNS)}, synced_at)
SELECT %(d)s, {', '.join(_COLUMNS)}, %(at)s FROM _ad_contacts_in
ON CONFLICT (directory_id, object_guid) DO UPDATE SET
    {', '.join(f'{c} = EXCLUDED.{c}' for c in _COLUMNS if c != 'object_guid')},
    deleted = false, deleted_at = NULL, synced_at = EXCLUDED.synced_at
WHERE ({', '.join(f't.{c}' for c in _COLUMNS if c != 'usn_changed')}, t.deleted)
      IS DISTINCT FROM ({', '.join(f'EXCLUDED.{c}' for c in _COLUMNS if c != 'usn_changed')}, false)
"""


def _contact_row(entry, org_id: int | None) -> tuple:
    guid = entry.guid()
    if guid is None:
        raise ValueError("objectGUID: missing")
    return (org_id, guid, entry.dn, entry.text("cn"), entry.text("displayName"), entry.text("givenName"),
            entry.text("sn"), entry.text("mail"), entry.text("targetAddress"), entry.text("company"),
            entry.text("telephoneNumber"), entry.time("whenChanged"), entry.int("uSNChanged"))


def _contacts_pass(conn, ad, d: Directory, mark: Watermark, report) -> Counter:
    counts: Counter = Counter(contacts_read=0, contacts_written=0, contacts_deleted=0, contacts_skipped=0)
    orgs = org_ids(conn, d)
    rows, seen = [], []
    for entry in ad.changed_since(d.base_dn, CONTACT_FILTER, mark.since, CONTACT_ATTRIBUTES):
        counts["contacts_read"] += 1
        org_dn = organisation_of(entry.dn, d.base_dn)
        try:
            row = _contact_row(entry, orgs.get(dn_key(org_dn)) if org_dn else None)
        except ValueError as exc:
            report.skip("unreadable contact", f"directory {d.name}: {entry.dn}: {exc}")
            counts["contacts_skipped"] += 1
            continue
        seen.append((row[1],))
        rows.append(row)
    conn.execute(f"CREATE TEMP TABLE _ad_contacts_in ({', '.join(f'{c} {t}' for c, t in zip(_COLUMNS, _TYPES))})"
                 " ON COMMIT DROP")
    copy(conn, "_ad_contacts_in", _COLUMNS, rows)
    counts["contacts_written"] += conn.execute(_UPSERT, {"d": d.id, "at": mark.at}).rowcount
    if mark.full:
        counts["contacts_deleted"] += mark_unseen(conn, "ad_contacts", d, mark.at, seen)
    else:
        gone = [e.guid() for e in ad.deleted_since(mark.since, CONTACT_FILTER, ("objectClass",))]
        if gone:
            counts["contacts_deleted"] += conn.execute(
                "UPDATE ad_contacts SET deleted = true, deleted_at = %s WHERE directory_id = %s AND NOT deleted"
                " AND object_guid = ANY(%s::uuid[])", (mark.at, d.id, [g for g in gone if g])).rowcount
    return counts



def sync_ad_contacts(panel_db, interval, params, log) -> dict:
    """Sync AD contacts from backend (see the module's doc). Params: ``ad_full_sync`` (force a full
    pass), ``ad_full_sync_hours`` (24)."""

    def work(conn, ad, d, report):
        mark = Watermark(conn, ad, d, STEP_CONTACTS, interval, params)
        counts = _contacts_pass(conn, ad, d, mark, report)
        mark.save()
        return counts, mark.mode, mark.since, mark.usn_now

    return sync_each_directory(panel_db, interval, log, STEP_CONTACTS, work)
