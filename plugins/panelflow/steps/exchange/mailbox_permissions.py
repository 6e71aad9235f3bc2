"""GroupActionWorkMailBoxPermissions: what Exchange says about mailboxes' permissions and forwarding.

1. :func:`sync_mailbox_permissions` — per organisation: full access (Get-MailboxPermission), send as
   (the AD "Send As" right — Get-RecipientPermission exists only in Exchange Online) and send on
   behalf (GrantSendOnBehalfTo), explicit entries only, without NT AUTHORITY\\SELF and other system
   accounts (:func:`_system_account`); the panel's permission rows of every mailbox Exchange reported
   are replaced by these in one statement (added, changed and removed counted).
2. :func:`sync_mailbox_forwarding` — ForwardingSmtpAddress / ForwardingAddress /
   DeliverToMailboxAndForward of every mailbox of each organisation → its mailbox row.

A mailbox reported by Exchange is matched to the panel's row by ExchangeGuid, else by primary
address (the GUID is then recorded). The clock is ``interval.end``.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable
from typing import Any
from uuid import UUID

from panelflow.hooks.powershell import PowerShellHook, parse_records
from panelflow.step import StepReport

from ._backend import ExchangeServer, ForwardingState, Record, each_server, exchange_servers

MAILBOXES_PER_ORGANIZATION = 5000

SYSTEM_ACCOUNTS = frozenset(name.lower() for name in (
    "Exchange Servers", "Exchange Trusted Subsystem", "Exchange Windows Permissions", "Exchange Domain Servers",
    "Exchange Organization Administrators", "Exchange Enterprise Servers", "Organization Management",
    "Domain Admins", "Enterprise Admins", "Administrators", "Managed Availability Servers", "Public Folder Management",
    "Delegated Setup", "Exchange View-Only Administrators", "Exchange Recipient Administrators",
    "Exchange Public Folder Administrators"))


def _system_account(trustee: str) -> bool:
    """NT AUTHORITY\\… (SELF, SYSTEM, NETWORK SERVICE), a bare SID (a deleted account) or one of
    Exchange's and AD's own groups (:data:`SYSTEM_ACCOUNTS`, in any domain): Exchange sets these on
    every mailbox; they are not a customer's permissions."""
    text = trustee.strip()
    if text.upper().startswith("NT AUTHORITY\\") or re.fullmatch(r"S-1-\d+(-\d+)+", text, re.IGNORECASE):
        return True
    return text.rsplit("\\", 1)[-1].lower() in SYSTEM_ACCOUNTS


class _MailboxPermissionEntry(Record):
    User: str
    AccessRights: list[str] = []
    IsInherited: bool = False
    Deny: bool = False


class _SendAsEntry(Record):
    User: str
    ExtendedRights: list[str] = []
    IsInherited: bool = False
    Deny: bool = False


class MailboxPermissions(Record):
    ExchangeGuid: UUID
    PrimarySmtpAddress: str
    MailboxPermissions: list[_MailboxPermissionEntry] = []
    SendAs: list[_SendAsEntry] = []
    GrantSendOnBehalfTo: list[str] = []


class MailboxForwarding(ForwardingState):
    pass



_ORGANIZATIONS = """
SELECT o.id, o.name, o.organizational_unit, o.exchange_server_id FROM exchange_organizations o
JOIN exchange_servers s ON s.id = o.exchange_server_id AND s.enabled ORDER BY o.exchange_server_id, o.id
"""

_ORG_MAILBOXES = """
SELECT id, exchange_guid, lower(primary_smtp_address) FROM exchange_mailboxes
WHERE organization_id = %s AND status IN ('active', 'disabled')
"""

_LEARN_GUIDS = """
UPDATE exchange_mailboxes m SET exchange_guid = u.guid
FROM unnest(%s::bigint[], %s::uuid[]) AS u(id, guid) WHERE m.id = u.id AND m.exchange_guid IS NULL
"""


def _per_organization(panel_db, interval, params, log, report: StepReport, script: str, model,
                      apply: Callable[[Any, list[tuple[int, Any]]], None]) -> None:
    """For each organisation of each enabled server: ``script`` for its OU, its rows matched to the
    panel's mailboxes (by GUID, else primary address), then ``apply(conn, [(mailbox_id, record)])``."""
    params = params or {}
    limit = int(params.get("mailboxes_per_organization", MAILBOXES_PER_ORGANIZATION))
    report.zero("organizations", "reported", "matched", "not_in_panel")
    with panel_db.get_conn() as conn:
        conn.autocommit = True
        organizations = defaultdict(list)
        for org_id, name, ou, server_id in conn.execute(_ORGANIZATIONS).fetchall():
            organizations[server_id].append((org_id, name, ou))

        def work(server: ExchangeServer, hook: PowerShellHook) -> None:
            for org_id, name, ou in organizations[server.id]:
                records = parse_records(model, hook.run_script(script, {"OrganizationalUnit": ou, "ResultSize": limit}),
                                        report, "mailbox")
                report.add("organizations")
                report.add("reported", len(records))
                by_guid, by_address, without_guid = {}, {}, set()
                for mailbox_id, guid, address in conn.execute(_ORG_MAILBOXES, (org_id,)).fetchall():
                    if guid is None:
                        without_guid.add(mailbox_id)
                    else:
                        by_guid[guid] = mailbox_id
                    by_address[address] = mailbox_id
                matched, learned = [], []
                for record in records:
                    mailbox_id = by_guid.get(record.ExchangeGuid)
                    if mailbox_id is None:
                        mailbox_id = by_address.get(record.PrimarySmtpAddress.lower())
                        if mailbox_id in without_guid:
                            learned.append((mailbox_id, record.ExchangeGuid))
                    if mailbox_id is None:
                        report.add("not_in_panel")
                        continue
                    matched.append((mailbox_id, record))
                with conn.transaction():
                    if learned:
                        conn.execute(_LEARN_GUIDS, ([m for m, _ in learned], [g for _, g in learned]))
                    apply(conn, matched)
                report.add("matched", len(matched))

        each_server(exchange_servers(conn, organizations), report, log, work, count_done=True)


_PERMISSIONS_REPLACE = """
WITH wanted AS (
    SELECT DISTINCT ON (mailbox_id, permission, lower(trustee), deny) *
    FROM jsonb_to_recordset(%(rows)s::jsonb) AS r(mailbox_id bigint, permission text, trustee text,
                                                 access_rights text[], is_inherited boolean, deny boolean)
    ORDER BY mailbox_id, permission, lower(trustee), deny
), removed AS (
    DELETE FROM exchange_mailbox_permissions p
    WHERE p.mailbox_id = ANY(%(mailboxes)s::bigint[])
      AND NOT EXISTS (SELECT 1 FROM wanted w WHERE w.mailbox_id = p.mailbox_id AND w.permission = p.permission
                      AND lower(w.trustee) = lower(p.trustee) AND w.deny = p.deny)
    RETURNING 1
), written AS (
    INSERT INTO exchange_mailbox_permissions AS p (mailbox_id, permission, trustee, access_rights, is_inherited, deny,
                                                   synced_at)
    SELECT mailbox_id, permission, trustee, access_rights, is_inherited, deny, %(at)s FROM wanted
    ON CONFLICT (mailbox_id, permission, lower(trustee), deny) DO UPDATE SET trustee = EXCLUDED.trustee,
        access_rights = EXCLUDED.access_rights, is_inherited = EXCLUDED.is_inherited, synced_at = EXCLUDED.synced_at
    WHERE (p.trustee, p.access_rights, p.is_inherited) IS DISTINCT FROM
          (EXCLUDED.trustee, EXCLUDED.access_rights, EXCLUDED.is_inherited)
    RETURNING (xmax = 0) AS inserted
), synced AS (
    UPDATE exchange_mailboxes SET permissions_synced_at = %(at)s WHERE id = ANY(%(mailboxes)s::bigint[])
)
SELECT (SELECT count(*) FILTER (WHERE inserted) FROM written), (SELECT count(*) FROM written),
       (SELECT count(*) FROM removed)
"""


def _permission_rows(mailbox_id: int, record: MailboxPermissions, report: StepReport) -> list[dict]:
    rows = []
    for entry in record.MailboxPermissions:
        if entry.IsInherited or _system_account(entry.User):
            report.add("system_entries_ignored")
            continue
        rows.append({"mailbox_id": mailbox_id, "trustee": entry.User, "access_rights": entry.AccessRights,
                     "permission": "FullAccess" if "FullAccess" in entry.AccessRights else "Other",
                     "is_inherited": False, "deny": entry.Deny})
    for entry in record.SendAs:
        if entry.IsInherited or _system_account(entry.User):
            report.add("system_entries_ignored")
            continue
        rows.append({"mailbox_id": mailbox_id, "permission": "SendAs", "trustee": entry.User,
                     "access_rights": entry.ExtendedRights, "is_inherited": False, "deny": entry.Deny})
    for trustee in record.GrantSendOnBehalfTo:
        rows.append({"mailbox_id": mailbox_id, "permission": "SendOnBehalf", "trustee": trustee,
                     "access_rights": ["SendOnBehalf"], "is_inherited": False, "deny": False})
    return rows


def sync_mailbox_permissions(panel_db, interval, params, log) -> dict:
    """Sync mailbox permissions in database."""
    from psycopg.types.json import Jsonb

    report = StepReport().zero("added", "changed", "removed", "system_entries_ignored")

    def apply(conn, matched: list[tuple[int, MailboxPermissions]]) -> None:
        if not matched:
            return
        rows = [row for mailbox_id, record in matched for row in _permission_rows(mailbox_id, record, report)]
        added, written, removed = conn.execute(_PERMISSIONS_REPLACE, {
            "rows": Jsonb(rows), "mailboxes": [m for m, _ in matched], "at": interval.end}).fetchone()
        report.add("added", added)
        report.add("changed", written - added)
        report.add("removed", removed)

    _per_organization(panel_db, interval, params, log, report, "exchange/get_mailbox_permissions", MailboxPermissions,
                      apply)
    return report.as_dict()


_FORWARDING = """
WITH reported AS (
    SELECT * FROM jsonb_to_recordset(%(rows)s::jsonb) AS r(id bigint, smtp text, recipient text, keep boolean)
), before AS (
    SELECT m.id, (m.forwarding_smtp_address IS DISTINCT FROM r.smtp OR m.forwarding_address IS DISTINCT FROM r.recipient
                  OR m.deliver_to_mailbox_and_forward IS DISTINCT FROM r.keep) AS differs
    FROM exchange_mailboxes m JOIN reported r ON r.id = m.id
)
UPDATE exchange_mailboxes m SET forwarding_smtp_address = r.smtp, forwarding_address = r.recipient,
       deliver_to_mailbox_and_forward = r.keep, forwarding_synced_at = %(at)s
FROM reported r JOIN before b ON b.id = r.id
WHERE m.id = r.id
RETURNING b.differs
"""


def sync_mailbox_forwarding(panel_db, interval, params, log) -> dict:
    """Sync mailbox forwarding in database."""
    from psycopg.types.json import Jsonb

    report = StepReport().zero("changed")

    def apply(conn, matched: list[tuple[int, MailboxForwarding]]) -> None:
        if not matched:
            return
        rows = [{"id": mailbox_id, "smtp": r.ForwardingSmtpAddress, "recipient": r.ForwardingAddress,
                 "keep": r.DeliverToMailboxAndForward} for mailbox_id, r in matched]
        differs = conn.execute(_FORWARDING, {"rows": Jsonb(rows), "at": interval.end}).fetchall()
        report.add("changed", sum(1 for (d,) in differs if d))

    _per_organization(panel_db, interval, params, log, report, "exchange/get_mailbox_forwarding", MailboxForwarding,
                      apply)
    return report.as_dict()
