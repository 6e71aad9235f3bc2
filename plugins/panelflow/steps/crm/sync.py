"""SyncFromBackendWork 1: mirror each CRM organisation's business units, security roles and users.

CRM is the truth for who exists and what they may do, so each enabled organisation is read whole
(``organizations``, ``businessunits``, ``roles``, ``systemusers`` with their roles expanded, page by
page) and written set-based, a page at a time: one row per record, keyed by its Dataverse GUID, so a
rerun rewrites the same rows. A business unit or role no longer in CRM is dropped; a user gets
``removed_at`` (the panel's history of them stays). Names are written only when a user is first
seen: after that GroupActionWorkCRM 2 owns them, because the panel may have edited them meanwhile.
Users of Microsoft's support and delegated-admin access modes (3, 5) are not the customer's and are
not read. A record that cannot be read (no GUID, an access mode or CAL type Dataverse does not
define) is reported and skipped; the rest of its page is written.
"""

from __future__ import annotations

import json

from panelflow.hooks.dynamics import DynamicsHook, SystemUser
from panelflow.step import StepReport
from panelflow.steps.crm._backend import CUSTOMER_USERS, Organization, each_organization

ACCESS_MODES = range(0, 6)
CAL_TYPES = range(0, 13)

_ORGANIZATION = "UPDATE crm_organizations SET crm_organization_id = %s, crm_name = %s WHERE id = %s"

_BUSINESS_UNITS = """
INSERT INTO crm_business_units AS b (organization_id, businessunitid, name, parent_businessunitid, synced_at)
SELECT %(org)s, x.id, x.name, x.parent, %(at)s
FROM jsonb_to_recordset(%(rows)s::jsonb) AS x(id uuid, name text, parent uuid)
ON CONFLICT (organization_id, businessunitid) DO UPDATE
SET name = EXCLUDED.name, parent_businessunitid = EXCLUDED.parent_businessunitid, synced_at = EXCLUDED.synced_at
"""

_ROLES = """
INSERT INTO crm_roles AS r (organization_id, roleid, businessunitid, name, synced_at)
SELECT %(org)s, x.id, x.business_unit, x.name, %(at)s
FROM jsonb_to_recordset(%(rows)s::jsonb) AS x(id uuid, name text, business_unit uuid)
ON CONFLICT (organization_id, roleid) DO UPDATE
SET businessunitid = EXCLUDED.businessunitid, name = EXCLUDED.name, synced_at = EXCLUDED.synced_at
"""

_GONE = "DELETE FROM {table} WHERE organization_id = %(org)s AND synced_at <> %(at)s"

_USERS = """
INSERT INTO crm_users AS u (organization_id, systemuserid, domainname, businessunitid, first_name, last_name,
                            synced_first_name, synced_last_name, crm_modified_on, is_disabled, access_mode, cal_type,
                            roles, etag, first_seen_at, synced_at)
SELECT %(org)s, x.systemuserid, x.domainname, x.businessunitid, x.first_name, x.last_name, x.first_name, x.last_name,
       x.crm_modified_on, x.is_disabled, x.access_mode, x.cal_type,
       ARRAY(SELECT jsonb_array_elements_text(x.roles))::uuid[], x.etag, %(at)s, %(at)s
FROM jsonb_to_recordset(%(rows)s::jsonb) AS x(systemuserid uuid, domainname text, businessunitid uuid, first_name text,
                                             last_name text, crm_modified_on timestamptz, is_disabled boolean,
                                             access_mode smallint, cal_type smallint, roles jsonb, etag text)
ON CONFLICT (organization_id, systemuserid) DO UPDATE
SET domainname = EXCLUDED.domainname, businessunitid = EXCLUDED.businessunitid,
    crm_modified_on = EXCLUDED.crm_modified_on, is_disabled = EXCLUDED.is_disabled,
    access_mode = EXCLUDED.access_mode, cal_type = EXCLUDED.cal_type, roles = EXCLUDED.roles, etag = EXCLUDED.etag,
    synced_at = EXCLUDED.synced_at, removed_at = NULL
RETURNING (xmax = 0)
"""

_USERS_GONE = """
UPDATE crm_users SET removed_at = %(at)s
WHERE organization_id = %(org)s AND synced_at <> %(at)s AND removed_at IS NULL
  AND systemuserid <> ALL(%(kept)s::uuid[])        -- skipped as unreadable is not gone
"""


def _user_problem(user: SystemUser) -> str | None:
    if user.access_mode is not None and user.access_mode not in ACCESS_MODES:
        return f"unknown access mode {user.access_mode}"
    if user.cal_type is not None and user.cal_type not in CAL_TYPES:
        return f"unknown CAL type {user.cal_type}"
    return None


def _pull(conn, org: Organization, hook: DynamicsHook, at, report: StepReport) -> None:
    found = hook.organization()
    conn.execute(_ORGANIZATION, (found.id, found.name, org.id))
    base = {"org": org.id, "at": at}
    with conn.transaction():  # a half-read organisation never drops what it did not reach
        for page in hook.business_unit_pages():
            report.skip_rows(page.bad)
            rows = [{"id": str(b.id), "name": b.name, "parent": b.parent and str(b.parent)} for b in page.items]
            report.add("business_units", conn.execute(_BUSINESS_UNITS, {**base, "rows": json.dumps(rows)}).rowcount)
        for page in hook.role_pages():
            report.skip_rows(page.bad)
            rows = [{"id": str(r.id), "name": r.name, "business_unit": str(r.business_unit)} for r in page.items]
            report.add("roles", conn.execute(_ROLES, {**base, "rows": json.dumps(rows)}).rowcount)
        for table, key in (("crm_business_units", "business_units_removed"), ("crm_roles", "roles_removed")):
            report.add(key, conn.execute(_GONE.format(table=table), base).rowcount)
    kept: list[str] = []
    for page in hook.user_pages(filter=CUSTOMER_USERS, with_roles=True):
        report.skip_rows(page.bad)
        rows = []
        for user in page.items:
            problem = _user_problem(user)
            if problem:
                report.skip(problem, f"user {user.id}")
                kept.append(str(user.id))
            else:
                rows.append(user.as_row())
        inserted = [r[0] for r in conn.execute(_USERS, {**base, "rows": json.dumps(rows)}).fetchall()] if rows else []
        report.add("users_added", sum(inserted))
        report.add("users_updated", len(inserted) - sum(inserted))
    report.add("users_removed", conn.execute(_USERS_GONE, {**base, "kept": kept}).rowcount)


def sync_crm_data(panel_db, interval, log=None) -> dict:
    """Sync CRM data from backend."""
    report = StepReport().zero("business_units", "roles", "users_added", "users_updated", "users_removed")
    with panel_db.get_conn() as conn:
        conn.autocommit = True
        each_organization(conn, interval.end, report, log, lambda org, hook: _pull(conn, org, hook, interval.end,
                                                                                  report),
                          what="data pull", record_success=True)
    return report.as_dict()
