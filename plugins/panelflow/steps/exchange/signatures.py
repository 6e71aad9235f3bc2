"""ProvisioningWork 10: which hosted organisations use an Exchange signature, kept in the panel.

A signature on hosted Exchange is a transport rule that appends (or prepends) an HTML disclaimer
to the messages of some senders; the panel bills and shows it per organisation. Per server that
hosts organisations, the signature rules (``exchange/get_signature_rules``: Get-TransportRule with
``ApplyHtmlDisclaimerText``) are read once, and a rule is an organisation's when one of its sender
domains (``SenderDomainIs``, or the domain of a ``From`` address) is one of the organisation's
accepted domains. One ``exchange_signature_usage`` row per organisation and rule (by the rule's
Guid), its name, state and location kept current; a rule no longer reported by a run in which its
server answered is marked ``removed_at`` (kept: the usage history stays readable). A rule matching
no organisation is named in the summary. A rerun with the same clock changes nothing.
"""

from __future__ import annotations

from uuid import UUID

from pydantic import Field

from panelflow.hooks.powershell import parse_records
from panelflow.step import StepReport

from ._backend import Record, Texts, as_json, each_server, exchange_servers


class SignatureRule(Record):
    Guid: UUID
    Name: str = Field(min_length=1)
    State: str = "Enabled"
    ApplyHtmlDisclaimerLocation: str | None = None
    SenderDomainIs: Texts = []
    From: Texts = []

    @property
    def domains(self) -> list[str]:
        """The sender domains the rule applies to, lower case."""
        found = {d.strip().lower() for d in self.SenderDomainIs if d.strip()}
        found |= {a.rsplit("@", 1)[1].strip().lower() for a in self.From if "@" in a}
        return sorted(found)


_SERVERS = "SELECT DISTINCT exchange_server_id FROM exchange_organizations"

_USAGE = """
WITH x AS (
    SELECT * FROM jsonb_to_recordset(%(rows)s::jsonb) AS x(guid uuid, name text, enabled boolean, location text,
                                                          domains text[])
), matched AS (
    SELECT o.id AS organization_id, x.guid, x.name, x.enabled, x.location
    FROM x JOIN exchange_organizations o ON o.exchange_server_id = %(server)s
    WHERE EXISTS (SELECT 1 FROM unnest(o.accepted_domains) d WHERE lower(d) = ANY(x.domains))
), upserted AS (
    INSERT INTO exchange_signature_usage AS u (organization_id, rule_guid, rule_name, enabled, location,
                                               first_seen_at, last_seen_at)
    SELECT organization_id, guid, name, enabled, location, %(at)s, %(at)s FROM matched
    ON CONFLICT (organization_id, rule_guid) DO UPDATE SET
        rule_name = EXCLUDED.rule_name, enabled = EXCLUDED.enabled, location = EXCLUDED.location,
        last_seen_at = EXCLUDED.last_seen_at, removed_at = NULL
    WHERE u.last_seen_at <= EXCLUDED.last_seen_at
    RETURNING (u.xmax = 0) AS inserted
), gone AS (
    UPDATE exchange_signature_usage u SET removed_at = %(at)s
    FROM exchange_organizations o
    WHERE o.id = u.organization_id AND o.exchange_server_id = %(server)s AND u.removed_at IS NULL
      AND u.last_seen_at < %(at)s
      AND NOT EXISTS (SELECT 1 FROM matched m WHERE m.organization_id = u.organization_id AND m.guid = u.rule_guid)
    RETURNING 1
)
SELECT (SELECT count(*) FROM matched), (SELECT count(*) FILTER (WHERE inserted) FROM upserted),
       (SELECT count(*) FROM gone),
       (SELECT array_agg(x.name ORDER BY x.name) FROM x
        WHERE NOT EXISTS (SELECT 1 FROM matched m WHERE m.guid = x.guid))
"""


def update_exchange_signature_usage(panel_db, interval, log) -> dict:
    """Update exchange signature usage in database: the signature rules each organisation uses."""
    at = interval.end
    report = StepReport().zero("rules", "usages", "usages_new", "usages_removed", "rules_unmatched")
    with panel_db.get_conn() as conn:
        conn.autocommit = True
        ids = [r[0] for r in conn.execute(_SERVERS).fetchall()]

        def work(server, hook) -> None:
            rules = {r.Guid: r for r in parse_records(SignatureRule, hook.run_script("exchange/get_signature_rules"),
                                                      report, f"server {server.name} signature rule")}
            report.add("rules", len(rules))
            records = [{"guid": str(r.Guid), "name": r.Name, "enabled": r.State == "Enabled",
                        "location": r.ApplyHtmlDisclaimerLocation, "domains": r.domains} for r in rules.values()]
            with conn.transaction():
                usages, new, gone, unmatched = conn.execute(_USAGE, {"rows": as_json(records), "server": server.id,
                                                                     "at": at}).fetchone()
            report.add("usages", usages)
            report.add("usages_new", new)
            report.add("usages_removed", gone)
            report.add("rules_unmatched", len(unmatched or []))
            for name in unmatched or []:
                report.skip("signature rule matches no organisation's accepted domains",
                            f"server {server.name} rule {name}")

        each_server(exchange_servers(conn, ids), report, log, work)
    return report.as_dict()
