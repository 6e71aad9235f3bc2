"""SyncStaffUsersWork: the employees' data linked to their AD users (``ad_staff``)."""

from __future__ import annotations

from collections import Counter

from panelflow.hooks.active_directory import UF_ACCOUNTDISABLE, USER_FILTER, escape_filter_value, guid_filter_value

from ._backend import GUID_BATCH, copy, sync_each_directory

STAFF_ATTRIBUTES = ("objectGUID", "sAMAccountName", "displayName", "givenName", "sn", "mail", "telephoneNumber",
                    "mobile", "title", "department", "company", "physicalDeliveryOfficeName", "employeeID",
                    "userAccountControl")

def sync_staff_users(panel_db, interval, params, log) -> dict:
    """Sync employee’s data linked to AD users."""

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
        copy(conn, "_ad_staff_in", ("staff_id", "object_guid", "sam", "display_name", "first_name", "last_name",
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

    return sync_each_directory(panel_db, interval, log, "sync_staff_users", work)

