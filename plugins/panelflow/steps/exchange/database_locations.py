"""ProvisioningWork 23: which mailbox database each panel mailbox lives in now.

A mailbox moves between databases (a move request, a rebalance), and the panel's ``database``
column is what provisioning, quotas and the recycle bin read. Per organisation, on the server its
cmdlets run on, Get-Mailbox of its OU gives each mailbox's database (name and Guid); the panel's
mailboxes are matched by ExchangeGuid and updated in one statement, a move counted ``moved``.

Bounded: ProvisioningWork runs every ten minutes, so each run checks at most
``locations_organizations_per_run`` (50) organisations, the ones checked longest ago first
(``database_synced_at``: when a mailbox's location was last checked, set also for a panel mailbox
Exchange did not list — it is counted ``not_found`` — so one such mailbox does not keep its
organisation first forever). A rerun with the same clock changes nothing.
"""

from __future__ import annotations

from panelflow.hooks.powershell import parse_records
from panelflow.step import StepReport

from ._backend import MailboxHome, Organization, as_json, each_organization, refused, run_item

ORGANIZATIONS_PER_RUN = 50

_DUE = """
SELECT o.exchange_server_id, o.id, o.name, o.organizational_unit, o.subscription_id
FROM exchange_organizations o
JOIN LATERAL (SELECT min(coalesce(m.database_synced_at, '-infinity')) AS checked FROM exchange_mailboxes m
              WHERE m.organization_id = o.id AND m.exchange_guid IS NOT NULL
                AND m.status IN ('active', 'disabled')) c ON c.checked IS NOT NULL
ORDER BY c.checked, o.id
LIMIT %s
"""

_LOCATE = """
WITH x AS (
    SELECT * FROM jsonb_to_recordset(%(rows)s::jsonb) AS x(guid uuid, database text, database_guid uuid)
)
UPDATE exchange_mailboxes m
SET database = coalesce(x.database, old.database), database_guid = coalesce(x.database_guid, old.database_guid),
    database_synced_at = %(at)s
FROM exchange_mailboxes old LEFT JOIN x ON x.guid = old.exchange_guid
WHERE old.id = m.id AND m.organization_id = %(org)s AND m.exchange_guid IS NOT NULL
  AND m.status IN ('active', 'disabled')
  AND (m.database_synced_at IS NULL OR m.database_synced_at <= %(at)s)
RETURNING x.guid IS NOT NULL AS found,
          x.guid IS NOT NULL AND old.database_guid IS NOT NULL AND old.database_guid IS DISTINCT FROM x.database_guid
"""


def sync_mailbox_database_locations(panel_db, interval, params=None, log=None) -> dict:
    """Sync mailbox database locations: each panel mailbox's database as Exchange reports it."""
    params = params or {}
    limit = int(params.get("locations_organizations_per_run", ORGANIZATIONS_PER_RUN))
    if limit < 1:
        raise ValueError("locations_organizations_per_run must be >= 1")
    at = interval.end
    report = StepReport().zero("mailboxes_checked", "moved", "not_found", "failed")

    with panel_db.get_conn() as conn:
        conn.autocommit = True

        def work(hook, org: Organization) -> None:
            rows, error = run_item(hook, "exchange/get_mailbox_locations",
                                   {"OrganizationalUnit": org.organizational_unit})
            if error is not None:
                refused(report, error, f"organization {org.name}")
                return
            homes = parse_records(MailboxHome, rows, report, f"organization {org.name} mailbox")
            records = [{"guid": str(h.ExchangeGuid), "database": h.Database,
                        "database_guid": None if h.DatabaseGuid is None else str(h.DatabaseGuid)} for h in homes]
            with conn.transaction():
                checked = conn.execute(_LOCATE, {"rows": as_json(records), "org": org.id, "at": at}).fetchall()
            report.add("mailboxes_checked", len(checked))
            report.add("moved", sum(1 for _, moved in checked if moved))
            missing = sum(1 for found, _ in checked if not found)
            report.add("not_found", missing)
            if missing:
                report.skip(f"{missing} panel mailbox(es) not listed by Exchange", f"organization {org.name}")

        each_organization(conn, _DUE, (limit,), report, log, work)
    return report.as_dict()
