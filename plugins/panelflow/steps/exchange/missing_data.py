"""SyncMissingDataWork step 2: every hosted organisation's mailboxes, distribution lists and mail
contacts into ``exchange_backups`` (0036), and deleted distribution lists into recovery.

**Backup.** For each organisation (``exchange_organizations``, on its own server) three scripts
list what Exchange has under the organisation's OU — ``backup_get_mailboxes``,
``backup_get_distribution_groups`` (settings, owners and members: Get-DistributionGroup and
Get-DistributionGroupMember) and ``backup_get_mail_contacts`` — with the OU and the bounds as PSRP
parameters. A full compare with the stored copy writes only rows that are missing or differ, so a
rerun writes nothing. An object no longer listed gets ``gone_at`` and keeps its row — what a
restore needs — but only when its listing was **complete**: a script Exchange refused, a record that
did not parse, or a listing of exactly ``backup_result_size`` (5000) objects (possibly cut short)
marks nothing gone for that organisation and kind (reported).

**Recovery.** A distribution list that went away in this run is what ProvisioningWork 42–43 offer
for recovery: its row in ``recovery_distribution_lists`` (name, address, the backed-up definition,
``deleted_at`` = the run's clock) is written in the same transaction, once (the list's GUID and
``deleted_at`` are unique there; a list already in recovery under the same customer and address,
e.g. written by the panel when it deleted it, is not added again). A list of an organisation
without a customer cannot be offered to anyone: reported and skipped.
"""

from __future__ import annotations

from uuid import UUID

from psycopg.types.json import Jsonb
from pydantic import ConfigDict, Field

from panelflow.hooks.powershell import parse_records
from panelflow.step import StepReport

from ._backend import Items, Organization, Record, Texts, each_organization, refused, run_item

RESULT_SIZE = 5000
MEMBER_LIMIT = 5000

_ORGANIZATIONS = """
SELECT o.exchange_server_id, o.id, o.name, o.organizational_unit, o.subscription_id
FROM exchange_organizations o JOIN exchange_servers s ON s.id = o.exchange_server_id AND s.enabled
ORDER BY o.exchange_server_id, o.id
"""


class BackedUp(Record):
    """One listed object; every field the script printed is kept as its definition."""

    model_config = ConfigDict(extra="allow", frozen=True)
    Guid: UUID
    Name: str = Field(min_length=1)
    PrimarySmtpAddress: str | None = None


class DistributionList(BackedUp):
    ManagedBy: Texts = []
    Members: Items = []
    MembersTruncated: bool = False


# kind → (script, model)
KINDS = {
    "mailbox": ("exchange/backup_get_mailboxes", BackedUp),
    "distribution_list": ("exchange/backup_get_distribution_groups", DistributionList),
    "contact": ("exchange/backup_get_mail_contacts", BackedUp),
}

_WRITE = """
INSERT INTO exchange_backups AS b (organization_id, kind, guid, name, primary_smtp_address, definition, backed_up_at)
SELECT %(org)s, kind, guid, name, address, definition, %(at)s FROM _xbackup_in
ON CONFLICT (organization_id, kind, guid) DO UPDATE SET name = EXCLUDED.name,
    primary_smtp_address = EXCLUDED.primary_smtp_address, definition = EXCLUDED.definition,
    backed_up_at = EXCLUDED.backed_up_at, gone_at = NULL
WHERE (b.name, b.primary_smtp_address, b.definition, b.gone_at IS NULL)
      IS DISTINCT FROM (EXCLUDED.name, EXCLUDED.primary_smtp_address, EXCLUDED.definition, true)
"""
_GONE = """
UPDATE exchange_backups b SET gone_at = %(at)s
WHERE b.organization_id = %(org)s AND b.kind = ANY(%(complete)s) AND b.gone_at IS NULL
  AND NOT EXISTS (SELECT 1 FROM _xbackup_in i WHERE i.kind = b.kind AND i.guid = b.guid)
"""
_RECOVER = """
INSERT INTO recovery_distribution_lists (customer_id, name, email_address, definition, deleted_at, exchange_guid)
SELECT o.customer_id, b.name, b.primary_smtp_address, b.definition, b.gone_at, b.guid
FROM exchange_backups b JOIN exchange_organizations o ON o.id = b.organization_id
WHERE b.organization_id = %(org)s AND b.kind = 'distribution_list' AND b.gone_at = %(at)s
  AND o.customer_id IS NOT NULL AND b.primary_smtp_address IS NOT NULL
  AND NOT EXISTS (SELECT 1 FROM recovery_distribution_lists r
                  WHERE r.customer_id = o.customer_id AND lower(r.email_address) = lower(b.primary_smtp_address))
ON CONFLICT (exchange_guid, deleted_at) WHERE exchange_guid IS NOT NULL DO NOTHING
"""
_UNRECOVERABLE = """
SELECT b.name FROM exchange_backups b JOIN exchange_organizations o ON o.id = b.organization_id
WHERE b.organization_id = %(org)s AND b.kind = 'distribution_list' AND b.gone_at = %(at)s
  AND (o.customer_id IS NULL OR b.primary_smtp_address IS NULL)
ORDER BY b.name
"""


def _listing(hook, org: Organization, kind: str, result_size: int, member_limit: int, report: StepReport):
    """(records, complete) of one kind in one organisation; (None, False) when Exchange refused."""
    script, model = KINDS[kind]
    parameters = {"OrganizationalUnit": org.organizational_unit, "ResultSize": result_size}
    if kind == "distribution_list":
        parameters["MemberLimit"] = member_limit
    rows, error = run_item(hook, script, parameters)
    if error is not None:
        refused(report, error, f"organization {org.name} {kind}s")
        return None, False
    records = parse_records(model, rows, report, f"organization {org.name} {kind}")
    complete = len(records) == len(rows)
    if len(rows) >= result_size:
        complete = False
        report.add("listings_truncated")
        report.skip(f"{len(rows)} {kind}s listed, the ResultSize bound: none marked gone",
                    f"organization {org.name}")
    for record in records:
        if getattr(record, "MembersTruncated", False):
            report.skip(f"more than {member_limit} members: the backup keeps the first {member_limit}",
                        f"organization {org.name} distribution list {record.Name}")
    return records, complete


def sync_missing_exchange_data(panel_db, interval, params=None, log=None) -> dict:
    """Sync Exchange (Mailboxes, DLs, Contacts etc.) missing data to sync in backup tables (see the
    module's doc). Params: ``backup_result_size`` (5000), ``backup_member_limit`` (5000)."""
    params = params or {}
    result_size = int(params.get("backup_result_size", RESULT_SIZE))
    member_limit = int(params.get("backup_member_limit", MEMBER_LIMIT))
    if result_size < 1 or member_limit < 1:
        raise ValueError("backup_result_size and backup_member_limit must be positive")
    at = interval.end
    report = StepReport().zero("listed", "written", "gone", "recovery_added", "failed")

    with panel_db.get_conn() as conn:
        conn.autocommit = True

        def work(hook, org: Organization) -> None:
            rows: dict[tuple[str, UUID], tuple] = {}
            complete = []
            for kind in KINDS:
                records, whole = _listing(hook, org, kind, result_size, member_limit, report)
                if records is None:
                    continue
                if whole:
                    complete.append(kind)
                for r in records:
                    if (kind, r.Guid) in rows:
                        report.skip("listed twice", f"organization {org.name} {kind} {r.Guid}")
                        continue
                    rows[(kind, r.Guid)] = (kind, r.Guid, r.Name, r.PrimarySmtpAddress,
                                            Jsonb(r.model_dump(mode="json")))
            report.add("listed", len(rows))
            args = {"org": org.id, "at": at, "complete": complete}
            with conn.transaction():
                conn.execute("CREATE TEMP TABLE _xbackup_in (kind text, guid uuid, name text, address text,"
                              " definition jsonb, PRIMARY KEY (kind, guid)) ON COMMIT DROP")
                with conn.cursor() as cur, cur.copy("COPY _xbackup_in (kind, guid, name, address, definition)"
                                                     " FROM STDIN") as out:
                    for row in rows.values():
                        out.write_row(row)
                report.add("written", conn.execute(_WRITE, args).rowcount)
                report.add("gone", conn.execute(_GONE, args).rowcount)
                report.add("recovery_added", conn.execute(_RECOVER, args).rowcount)
                for (name,) in conn.execute(_UNRECOVERABLE, args).fetchall():
                    report.skip("deleted distribution list without a customer or address: not put in recovery",
                                f"organization {org.name} distribution list {name}")

        each_organization(conn, _ORGANIZATIONS, (), report, log, work)
    return report.as_dict()
