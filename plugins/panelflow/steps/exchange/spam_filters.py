"""GroupActionWorkEx step 6: per-organisation spam filtering.

:func:`handle_oss_spam_filters` — an organisation's ``exchange_spam_filter_settings`` row ``pending``
(or mailboxes of an ``applied`` one that have not had its thresholds yet) → its allowed/blocked
senders and domains as transport rules scoped to its accepted domains, its SCL thresholds on its
mailboxes (``set_organization_spam_filter``; Set-ContentFilterConfig is forest-wide, so it cannot
hold one tenant's settings) → ``applied`` with the rules as Exchange reports them.
"""

from __future__ import annotations


from pydantic import Field

from panelflow.hooks.powershell import PowerShellHook
from panelflow.step import StepReport

from ._backend import ExchangeServer, Record, apply_one, due_by_server, each_server, exchange_servers, refused

SPAM_ORGANIZATIONS_PER_RUN = 50
SPAM_MAILBOXES_PER_CALL = 500


class SpamRule(Record):
    Name: str
    State: str | None = None
    Priority: int | None = None
    From: list[str] = []
    SenderDomainIs: list[str] = []
    RecipientDomainIs: list[str] = []
    SetSCL: int | None = None
    DeleteMessage: bool | None = None


class SpamFilterState(Record):
    Rules: list[SpamRule] = []
    RemovedRules: list[str] = []
    MailboxesUpdated: int = Field(ge=0)


_SPAM_DUE = """
SELECT f.organization_id, o.name, o.accepted_domains, o.exchange_server_id, f.status,
       f.scl_delete_threshold, f.scl_reject_threshold, f.scl_quarantine_threshold, f.scl_junk_threshold,
       f.allowed_senders, f.blocked_senders, f.allowed_domains, f.blocked_domains
FROM exchange_spam_filter_settings f
JOIN exchange_organizations o ON o.id = f.organization_id
JOIN exchange_servers s ON s.id = o.exchange_server_id AND s.enabled
WHERE f.status = 'pending'
   OR (f.status = 'applied' AND EXISTS (SELECT 1 FROM exchange_mailboxes m WHERE m.organization_id = f.organization_id
                                        AND m.status IN ('active', 'disabled') AND m.spam_settings_applied_at IS NULL))
ORDER BY o.exchange_server_id, f.organization_id
LIMIT %s
"""

# settings changed: every mailbox of the organisation needs the new thresholds
_SPAM_RESET = """
UPDATE exchange_mailboxes SET spam_settings_applied_at = NULL
WHERE organization_id = ANY(%s::bigint[]) AND spam_settings_applied_at IS NOT NULL
"""

_SPAM_MAILBOXES = """
SELECT id, coalesce(exchange_guid::text, primary_smtp_address) FROM exchange_mailboxes
WHERE organization_id = %s AND status IN ('active', 'disabled') AND spam_settings_applied_at IS NULL
ORDER BY id LIMIT %s
"""

_SPAM_APPLIED = """
WITH settings AS (
    UPDATE exchange_spam_filter_settings SET status = 'applied', applied_at = %(at)s, applied_rules = %(rules)s,
           last_error = NULL
    WHERE organization_id = %(org)s
)
UPDATE exchange_mailboxes SET spam_settings_applied_at = %(at)s WHERE id = ANY(%(mailboxes)s::bigint[])
"""


def _threshold(value: int | None) -> int:
    return -1 if value is None else int(value)


def handle_oss_spam_filters(panel_db, interval, params, log) -> dict:
    """OSS Spam filters handling."""
    from psycopg.types.json import Jsonb

    params = params or {}
    per_call = max(1, int(params.get("spam_mailboxes_per_call", SPAM_MAILBOXES_PER_CALL)))
    report = StepReport().zero("due", "applied", "failed", "mailboxes_updated", "rules_removed")
    with panel_db.get_conn() as conn:
        conn.autocommit = True
        by_server = due_by_server(conn, _SPAM_DUE, (int(params.get("spam_organizations_per_run",
                                                                   SPAM_ORGANIZATIONS_PER_RUN)),), report, 3)
        conn.execute(_SPAM_RESET, ([row[0] for rows in by_server.values() for row in rows if row[4] == "pending"],))

        def fail(org_id: int, name: str, error: str) -> None:
            conn.execute("UPDATE exchange_spam_filter_settings SET status = 'failed', last_error = %s"
                         " WHERE organization_id = %s", (error, org_id))
            refused(report, error, f"organisation {name}")

        def work(server: ExchangeServer, hook: PowerShellHook) -> None:
            for (org_id, name, domains, _, _, delete, reject, quarantine, junk,
                 allowed_senders, blocked_senders, allowed_domains, blocked_domains) in by_server[server.id]:
                if not domains:
                    fail(org_id, name, "the organisation has no accepted domains to scope its spam rules to")
                    continue
                mailboxes = conn.execute(_SPAM_MAILBOXES, (org_id, per_call)).fetchall()
                state, error = apply_one(hook, SpamFilterState, "exchange/set_organization_spam_filter", {
                    "RuleNamePrefix": f"panelflow spam {name}", "RecipientDomains": list(domains),
                    "AllowedSenders": list(allowed_senders), "BlockedSenders": list(blocked_senders),
                    "AllowedDomains": list(allowed_domains), "BlockedDomains": list(blocked_domains),
                    "Mailboxes": [identity for _, identity in mailboxes],
                    "SCLDeleteThreshold": _threshold(delete), "SCLRejectThreshold": _threshold(reject),
                    "SCLQuarantineThreshold": _threshold(quarantine), "SCLJunkThreshold": _threshold(junk),
                    "Confirm": False})
                if error is not None:
                    fail(org_id, name, error)
                    continue
                conn.execute(_SPAM_APPLIED, {"at": interval.end, "org": org_id,
                                             "rules": Jsonb([r.model_dump() for r in state.Rules]),
                                             "mailboxes": [mailbox_id for mailbox_id, _ in mailboxes]})
                report.add("applied")
                report.add("mailboxes_updated", state.MailboxesUpdated)
                report.add("rules_removed", len(state.RemovedRules))

        each_server(exchange_servers(conn, by_server), report, log, work, count_done=True)
    return report.as_dict()


