"""GroupActionWorkEx steps 2 and 3: the panel's OWA mailbox policies created on Exchange and assigned.

2. :func:`create_pending_owa_policies` — ``exchange_owa_policies`` rows ``pending`` → New-OwaMailboxPolicy
   (unless it exists) + Set-OwaMailboxPolicy with the row's ``settings`` → ``created``; settings
   outside :data:`OWA_POLICY_SETTINGS` or refused by Exchange → ``failed`` with the reason.
3. :func:`assign_owa_policies` — mailboxes whose desired policy (``owa_policy_id``, ``created``) is not
   the one last applied → Set-CASMailbox -OwaMailboxPolicy, one call per server and policy for a
   batch of mailboxes; the applied name and time are recorded per mailbox.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any
from uuid import UUID

from panelflow.hooks.powershell import PowerShellHook, parse_records
from panelflow.step import StepReport

from ._backend import (ExchangeServer, OwaAssignment, Record, apply_one, due_by_server, each_server, exchange_servers,
                       refused, run_item, validated_settings)

OWA_POLICIES_PER_RUN = 100
OWA_ASSIGN_PER_RUN = 2000
OWA_ASSIGN_BATCH = 100

OWA_POLICY_SETTINGS: dict[str, Any] = {
    **{name: bool for name in (
        "ActiveSyncIntegrationEnabled", "AllAddressListsEnabled", "CalendarEnabled", "ChangePasswordEnabled",
        "ContactsEnabled", "DirectFileAccessOnPrivateComputersEnabled", "DirectFileAccessOnPublicComputersEnabled",
        "GlobalAddressListEnabled", "InstantMessagingEnabled", "JournalEnabled", "JunkEmailEnabled", "NotesEnabled",
        "OrganizationEnabled", "PremiumClientEnabled", "PublicFoldersEnabled", "RecoverDeletedItemsEnabled",
        "RemindersAndNotificationsEnabled", "RulesEnabled", "SearchFoldersEnabled", "SignaturesEnabled",
        "SMimeEnabled", "SpellCheckerEnabled", "TasksEnabled", "TextMessagingEnabled", "ThemeSelectionEnabled",
        "WacViewingOnPrivateComputersEnabled", "WacViewingOnPublicComputersEnabled")},
    "AllowOfflineOn": ("AllComputers", "PrivateComputersOnly", "NoComputers"),
    "ActionForUnknownFileAndMIMETypes": ("Allow", "ForceSave", "Block"),
    "DefaultTheme": str,
}
"""The Set-OwaMailboxPolicy parameters a panel policy may set (the script's ``param()`` block):
``bool``, one of the listed values, or any text."""


class OwaPolicyState(Record):
    Name: str
    Guid: UUID
    Created: bool



_OWA_PENDING = """
SELECT p.id, p.name, p.settings, p.exchange_server_id FROM exchange_owa_policies p
JOIN exchange_servers s ON s.id = p.exchange_server_id AND s.enabled
WHERE p.status = 'pending' ORDER BY p.exchange_server_id, p.id LIMIT %s
"""

_OWA_OUTCOMES = """
UPDATE exchange_owa_policies p SET status = u.status, exchange_guid = coalesce(u.guid, p.exchange_guid),
       created_on_exchange_at = CASE WHEN u.status = 'created' THEN %(at)s ELSE p.created_on_exchange_at END,
       last_error = u.error
FROM unnest(%(ids)s::bigint[], %(statuses)s::text[], %(guids)s::uuid[], %(errors)s::text[]) AS u(id, status, guid, error)
WHERE p.id = u.id AND p.status = 'pending'
"""


def _write_owa_outcomes(conn, outcomes: list[tuple], at) -> None:
    if outcomes:
        ids, statuses, guids, errors = map(list, zip(*outcomes))
        conn.execute(_OWA_OUTCOMES, {"at": at, "ids": ids, "statuses": statuses, "guids": guids, "errors": errors})


def create_pending_owa_policies(panel_db, interval, params, log) -> dict:
    """Creates pending OWA policies."""
    params = params or {}
    report = StepReport().zero("pending", "created", "already_existed", "failed")
    with panel_db.get_conn() as conn:
        conn.autocommit = True
        by_server = due_by_server(conn, _OWA_PENDING, (int(params.get("owa_policies_per_run", OWA_POLICIES_PER_RUN)),),
                                  report, 3, "pending")

        def work(server: ExchangeServer, hook: PowerShellHook) -> None:
            outcomes: list[tuple] = []
            try:
                for policy_id, name, settings, _ in by_server[server.id]:
                    try:
                        values = validated_settings(settings, OWA_POLICY_SETTINGS, f"OWA policy {name}")
                    except ValueError as exc:
                        state, error = None, str(exc)
                    else:
                        state, error = apply_one(hook, OwaPolicyState, "exchange/new_owa_mailbox_policy",
                                                 {"Name": name, **values})
                    if error is not None:
                        outcomes.append((policy_id, "failed", None, error))
                        refused(report, error, f"OWA policy {name}")
                        continue
                    outcomes.append((policy_id, "created", state.Guid, None))
                    report.add("created" if state.Created else "already_existed")
            finally:   # what was done before a timeout is kept
                _write_owa_outcomes(conn, outcomes, interval.end)

        each_server(exchange_servers(conn, by_server), report, log, work, count_done=True)
    return report.as_dict()


# -- 3. OWA policy assignment ----------------------------------------------------------------------------------

_OWA_DUE = """
SELECT m.exchange_server_id, p.name, m.id, coalesce(m.exchange_guid::text, m.primary_smtp_address)
FROM exchange_mailboxes m
JOIN exchange_owa_policies p ON p.id = m.owa_policy_id AND p.status = 'created'
                              AND p.exchange_server_id = m.exchange_server_id
JOIN exchange_servers s ON s.id = m.exchange_server_id AND s.enabled
WHERE m.status IN ('active', 'disabled') AND m.owa_policy_applied IS DISTINCT FROM p.name
ORDER BY m.exchange_server_id, p.name, m.id
LIMIT %s
"""

_OWA_WAITING = """
SELECT count(*) FROM exchange_mailboxes m JOIN exchange_owa_policies p ON p.id = m.owa_policy_id
WHERE m.status IN ('active', 'disabled') AND m.owa_policy_applied IS DISTINCT FROM p.name
  AND (p.status <> 'created' OR p.exchange_server_id <> m.exchange_server_id)
"""

_OWA_APPLIED = """
UPDATE exchange_mailboxes m SET owa_policy_applied = u.policy, owa_policy_applied_at = %(at)s
FROM unnest(%(ids)s::bigint[], %(policies)s::text[]) AS u(id, policy) WHERE m.id = u.id
"""


def assign_owa_policies(panel_db, interval, params, log) -> dict:
    """Assigns OWA policies to mailboxes."""
    params = params or {}
    batch = max(1, int(params.get("owa_assign_batch", OWA_ASSIGN_BATCH)))
    report = StepReport().zero("due", "assigned", "failed", "waiting_for_policy", "calls")
    with panel_db.get_conn() as conn:
        conn.autocommit = True
        due = due_by_server(conn, _OWA_DUE, (int(params.get("owa_assign_per_run", OWA_ASSIGN_PER_RUN)),), report, 0)
        report.add("waiting_for_policy", conn.execute(_OWA_WAITING).fetchone()[0])
        work_by_server: dict[int, dict[str, list[tuple[int, str]]]] = defaultdict(lambda: defaultdict(list))
        for server_id, policy, mailbox_id, identity in (row for rows in due.values() for row in rows):
            work_by_server[server_id][policy].append((mailbox_id, identity))

        def work(server: ExchangeServer, hook: PowerShellHook) -> None:
            for policy, mailboxes in work_by_server[server.id].items():
                for start in range(0, len(mailboxes), batch):
                    chunk = mailboxes[start:start + batch]
                    report.add("calls")
                    rows, error = run_item(hook, "exchange/set_cas_mailbox_owa_policy",
                                            {"Identity": [identity for _, identity in chunk], "OwaMailboxPolicy": policy})
                    if error is not None:      # the policy itself was refused: the whole batch waits
                        refused(report, error, f"OWA policy {policy} on {server.name}", len(chunk))
                        continue
                    by_identity = {identity.lower(): mailbox_id for mailbox_id, identity in chunk}
                    applied_ids, applied_names = [], []
                    for item in parse_records(OwaAssignment, rows, report, "OWA assignment"):
                        mailbox_id = by_identity.get(item.Identity.lower())
                        if mailbox_id is None:
                            report.skip("Exchange answered for a mailbox not asked for", f"mailbox {item.Identity}")
                        elif item.Error or not item.OwaMailboxPolicy:
                            refused(report, item.Error or "no policy reported", f"mailbox {item.Identity}")
                        else:
                            applied_ids.append(mailbox_id)
                            applied_names.append(item.OwaMailboxPolicy)
                    if applied_ids:
                        conn.execute(_OWA_APPLIED, {"at": interval.end, "ids": applied_ids, "policies": applied_names})
                        report.add("assigned", len(applied_ids))

        each_server(exchange_servers(conn, work_by_server), report, log, work, count_done=True)
    return report.as_dict()


