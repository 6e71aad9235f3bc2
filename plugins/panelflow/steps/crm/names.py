"""GroupActionWorkCRM 2: sync users' first and last names both ways, by one rule.

Both the panel (a customer renames a user on its pages) and CRM (someone edits the user in Dynamics)
may change a name. ``crm_users.synced_first_name``/``synced_last_name`` hold the names both sides
had at the last sync; each side changed since if its names differ from them. The rule, per user:

1. both sides have the same names → nothing to send (the baseline is moved to them);
2. only the panel changed → the panel's names are written to CRM;
3. only CRM changed → CRM's names are written to the panel;
4. both changed, differently → the later change wins: the panel's ``names_changed_at`` against CRM's
   ``modifiedon``; a tie goes to the panel (it is the system of record for what its customer typed),
   a panel change without a time loses.

First and last name move together (a user is renamed as a whole), each direction at most once per
user and run. A write to CRM carries the ETag read in this run (``If-Match``): a 412 means CRM changed
the user meanwhile, so nothing is written, the user is reported (``conflicts``) and the next run
re-reads it and applies the rule again. A name CRM refuses (400: too long, required) is reported and
skipped. At most ``name_updates_per_run`` (default 500) CRM writes per run; the rest wait for the next.
"""

from __future__ import annotations

import json

from panelflow.hooks.dynamics import DynamicsHook, DynamicsPreconditionFailed, DynamicsRequestError, SystemUser
from panelflow.step import StepReport, first_line
from panelflow.steps.crm._backend import CUSTOMER_USERS, Organization, each_organization

NAME_FIELDS = ("systemuserid", "firstname", "lastname", "modifiedon")
UPDATES_PER_RUN = 500

_PANEL_ROWS = """
SELECT systemuserid, first_name, last_name, synced_first_name, synced_last_name, names_changed_at
FROM crm_users WHERE organization_id = %s AND systemuserid = ANY(%s) AND removed_at IS NULL
"""

_AGREED = """
UPDATE crm_users u SET first_name = x.first_name, last_name = x.last_name, synced_first_name = x.first_name,
       synced_last_name = x.last_name, crm_modified_on = coalesce(x.modified_on, u.crm_modified_on),
       etag = coalesce(x.etag, u.etag)
FROM jsonb_to_recordset(%(rows)s::jsonb) AS x(systemuserid uuid, first_name text, last_name text,
                                             modified_on timestamptz, etag text)
WHERE u.organization_id = %(org)s AND u.systemuserid = x.systemuserid
"""


def decide(panel: tuple, crm: SystemUser) -> str:
    """``agree``, ``to_crm``, ``to_panel`` or ``same`` for one user (the rule of this module)."""
    first, last, synced_first, synced_last, changed_at = panel
    panel_names, crm_names, base = (first, last), (crm.first_name, crm.last_name), (synced_first, synced_last)
    if panel_names == crm_names:
        return "same" if base == panel_names else "agree"
    panel_changed, crm_changed = panel_names != base, crm_names != base
    if panel_changed and not crm_changed:
        return "to_crm"
    if crm_changed and not panel_changed:
        return "to_panel"
    if changed_at is None:
        return "to_panel"
    if crm.modified_on is None or changed_at >= crm.modified_on:
        return "to_crm"
    return "to_panel"


def _agreed(user: SystemUser, first, last) -> dict:
    return {"systemuserid": str(user.id), "first_name": first, "last_name": last,
            "modified_on": user.modified_on.isoformat() if user.modified_on else None, "etag": user.etag}


def _sync(conn, org: Organization, hook: DynamicsHook, report: StepReport, budget: list[int]) -> None:
    for page in hook.user_pages(fields=NAME_FIELDS, filter=CUSTOMER_USERS):
        report.skip_rows(page.bad)
        by_id = {u.id: u for u in page.items}
        rows = conn.execute(_PANEL_ROWS, (org.id, list(by_id))).fetchall() if by_id else []
        agreed = []
        for row in rows:
            user = by_id[row[0]]
            verdict = decide(row[1:], user)
            if verdict == "same":
                continue
            if verdict == "agree":
                agreed.append(_agreed(user, user.first_name, user.last_name))
                report.add("agreed")
            elif verdict == "to_panel":
                agreed.append(_agreed(user, user.first_name, user.last_name))
                report.add("to_panel")
            elif budget[0] <= 0:
                report.add("to_crm_deferred")
            else:
                budget[0] -= 1
                try:
                    written = hook.update_user(user, {"firstname": row[1], "lastname": row[2]})
                except DynamicsPreconditionFailed:
                    report.add("conflicts")
                    report.skip("CRM changed the user meanwhile (412); the rule is applied again next run",
                                f"user {user.id}")
                    continue
                except DynamicsRequestError as exc:
                    report.skip(f"CRM refused the names: {first_line(exc)}", f"user {user.id}")
                    continue
                agreed.append(_agreed(written, row[1], row[2]))
                report.add("to_crm")
        if agreed:
            conn.execute(_AGREED, {"org": org.id, "rows": json.dumps(agreed)})


def sync_user_names(panel_db, interval, params=None, log=None) -> dict:
    """Sync users first name and last name."""
    report = StepReport().zero("to_crm", "to_panel", "agreed", "conflicts")
    budget = [int((params or {}).get("name_updates_per_run", UPDATES_PER_RUN))]
    with panel_db.get_conn() as conn:
        conn.autocommit = True
        each_organization(conn, interval.end, report, log, lambda org, hook: _sync(conn, org, hook, report, budget),
                          what="name sync")
    return report.as_dict()
