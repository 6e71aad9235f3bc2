"""GroupActionWorkEx steps 4 and 8: smart-host send connectors and remote domains, synced both ways.

4. :func:`sync_smart_host_send_connectors` — two directions. Exchange → panel: every connector
   Get-SendConnector reports is recorded (smart hosts, address spaces, state); a connector the panel
   does not manage that is gone from Exchange is dropped. Panel → Exchange: only connectors the panel
   manages (``managed``, with desired smart hosts and address spaces) are created (New-SendConnector)
   when missing or set (Set-SendConnector) when different. Nothing is ever removed from Exchange.
8. :func:`sync_external_remote_domains` — as step 4, for remote domains (Get-RemoteDomain; the panel's
   managed ones created with New-RemoteDomain or set with Set-RemoteDomain, settings from
   :data:`REMOTE_DOMAIN_SETTINGS`).

Both run the same two directions (:func:`_sync_both_ways`); what differs is a :class:`_Kind`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from pydantic import ConfigDict

from panelflow.hooks.powershell import PowerShellHook, parse_records
from panelflow.step import StepReport

from ._backend import ExchangeServer, Record, apply_one, each_server, exchange_servers, refused, validated_settings

REMOTE_DOMAIN_SETTINGS: dict[str, Any] = {
    "AllowedOOFType": ("External", "ExternalLegacy", "InternalLegacy", "None"),
    **{name: bool for name in ("AutoReplyEnabled", "AutoForwardEnabled", "DeliveryReportEnabled", "NDREnabled",
                                "MeetingForwardNotificationEnabled", "TNEFEnabled", "DisplaySenderName",
                                "TrustedMailOutboundEnabled", "TrustedMailInboundEnabled")},
    "ContentType": ("MimeHtmlText", "MimeText", "MimeHtml"),
    "CharacterSet": str,
}
"""The Set-RemoteDomain parameters a panel remote domain may set."""



class SendConnectorState(Record):
    Name: str
    Guid: UUID
    Enabled: bool
    SmartHosts: list[str] = []
    AddressSpaces: list[str] = []
    Port: int
    DNSRoutingEnabled: bool
    SmartHostAuthMechanism: str | None = None


class RemoteDomainState(Record):
    model_config = ConfigDict(extra="allow")
    Name: str
    DomainName: str
    Guid: UUID
    IsInternal: bool = False

    def settings(self) -> dict:
        extra = self.model_extra or {}
        return {k: extra[k] for k in REMOTE_DOMAIN_SETTINGS if k in extra}



# -- 4. smart-host send connectors -----------------------------------------------------------------------------

def _smart_host(value: str) -> str:
    """Exchange writes an IP smart host in brackets (``[10.0.0.25]``) and a name as is."""
    text = value.strip().strip("[]")
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return text.lower()
    return f"[{text}]"


def _address_space(value: str) -> str:
    """``*`` / ``contoso.com`` / ``SMTP:*`` → Exchange's ``SMTP:*;1`` (type, space, cost)."""
    text = value.strip()
    kind, _, rest = text.rpartition(":") if ":" in text else ("SMTP", "", text)
    space, _, cost = rest.partition(";")
    return f"{kind.upper()}:{space.lower()};{cost or '1'}"


_CONNECTORS_OBSERVED = """
WITH seen AS (
    SELECT * FROM jsonb_to_recordset(%(rows)s::jsonb) AS r(name text, guid uuid, enabled boolean, smart_hosts text[],
        address_spaces text[], port integer, dns_routing_enabled boolean, auth text)
), upserted AS (
    INSERT INTO exchange_send_connectors AS c (exchange_server_id, name, present, exchange_guid, smart_hosts,
        address_spaces, enabled, port, dns_routing_enabled, smart_host_auth_mechanism, synced_at)
    SELECT %(server)s, name, true, guid, smart_hosts, address_spaces, enabled, port, dns_routing_enabled, auth, %(at)s
    FROM seen
    ON CONFLICT (exchange_server_id, name) DO UPDATE SET present = true, exchange_guid = EXCLUDED.exchange_guid,
        smart_hosts = EXCLUDED.smart_hosts, address_spaces = EXCLUDED.address_spaces, enabled = EXCLUDED.enabled,
        port = EXCLUDED.port, dns_routing_enabled = EXCLUDED.dns_routing_enabled,
        smart_host_auth_mechanism = EXCLUDED.smart_host_auth_mechanism, synced_at = EXCLUDED.synced_at
    RETURNING (xmax = 0) AS inserted
), gone AS (
    UPDATE exchange_send_connectors c SET present = false, synced_at = %(at)s
    WHERE c.exchange_server_id = %(server)s AND c.managed AND c.present
      AND NOT EXISTS (SELECT 1 FROM seen WHERE seen.name = c.name)
    RETURNING 1
), dropped AS (
    DELETE FROM exchange_send_connectors c
    WHERE c.exchange_server_id = %(server)s AND NOT c.managed AND NOT EXISTS (SELECT 1 FROM seen WHERE seen.name = c.name)
    RETURNING 1
)
SELECT (SELECT count(*) FILTER (WHERE inserted) FROM upserted), (SELECT count(*) FROM upserted),
       (SELECT count(*) FROM gone), (SELECT count(*) FROM dropped)
"""

_CONNECTORS_MANAGED = """
SELECT id, name, desired_smart_hosts, desired_address_spaces, desired_enabled, desired_port, source_transport_servers,
       present, exchange_guid::text, smart_hosts, address_spaces, enabled, port
FROM exchange_send_connectors WHERE exchange_server_id = %s AND managed ORDER BY id
"""

_CONNECTOR_OUTCOMES = """
UPDATE exchange_send_connectors c SET status = r.status, last_error = r.error, synced_at = %(at)s,
    present = coalesce(r.present, c.present), exchange_guid = coalesce(r.guid, c.exchange_guid),
    smart_hosts = coalesce(r.smart_hosts, c.smart_hosts), address_spaces = coalesce(r.address_spaces, c.address_spaces),
    enabled = coalesce(r.enabled, c.enabled), port = coalesce(r.port, c.port),
    dns_routing_enabled = coalesce(r.dns_routing_enabled, c.dns_routing_enabled),
    smart_host_auth_mechanism = coalesce(r.auth, c.smart_host_auth_mechanism)
FROM jsonb_to_recordset(%(rows)s::jsonb) AS r(id bigint, status text, error text, present boolean, guid uuid,
    smart_hosts text[], address_spaces text[], enabled boolean, port integer, dns_routing_enabled boolean, auth text)
WHERE c.id = r.id
"""


def _connector_row(state: SendConnectorState) -> dict:
    return {"name": state.Name, "guid": str(state.Guid), "enabled": state.Enabled, "smart_hosts": state.SmartHosts,
            "address_spaces": state.AddressSpaces, "port": state.Port, "dns_routing_enabled": state.DNSRoutingEnabled,
            "auth": state.SmartHostAuthMechanism}


# -- 8. remote domains -----------------------------------------------------------------------------------------

_DOMAINS_OBSERVED = """
WITH seen AS (
    SELECT * FROM jsonb_to_recordset(%(rows)s::jsonb) AS r(name text, domain_name text, guid uuid, is_internal boolean,
                                                          settings jsonb)
), upserted AS (
    INSERT INTO exchange_remote_domains AS d (exchange_server_id, name, domain_name, present, exchange_guid, is_internal,
                                              settings, synced_at)
    SELECT %(server)s, name, domain_name, true, guid, is_internal, settings, %(at)s FROM seen
    ON CONFLICT (exchange_server_id, lower(domain_name)) DO UPDATE SET present = true,
        name = CASE WHEN d.managed THEN d.name ELSE EXCLUDED.name END, exchange_guid = EXCLUDED.exchange_guid,
        is_internal = EXCLUDED.is_internal, settings = EXCLUDED.settings, synced_at = EXCLUDED.synced_at
    RETURNING (xmax = 0) AS inserted
), gone AS (
    UPDATE exchange_remote_domains d SET present = false, synced_at = %(at)s
    WHERE d.exchange_server_id = %(server)s AND d.managed AND d.present
      AND NOT EXISTS (SELECT 1 FROM seen WHERE lower(seen.domain_name) = lower(d.domain_name))
    RETURNING 1
), dropped AS (
    DELETE FROM exchange_remote_domains d
    WHERE d.exchange_server_id = %(server)s AND NOT d.managed
      AND NOT EXISTS (SELECT 1 FROM seen WHERE lower(seen.domain_name) = lower(d.domain_name))
    RETURNING 1
)
SELECT (SELECT count(*) FILTER (WHERE inserted) FROM upserted), (SELECT count(*) FROM upserted),
       (SELECT count(*) FROM gone), (SELECT count(*) FROM dropped)
"""

_DOMAINS_MANAGED = """
SELECT id, name, domain_name, desired_settings, present, exchange_guid::text, settings
FROM exchange_remote_domains WHERE exchange_server_id = %s AND managed ORDER BY id
"""

_DOMAIN_OUTCOMES = """
UPDATE exchange_remote_domains d SET status = r.status, last_error = r.error, synced_at = %(at)s,
    present = coalesce(r.present, d.present), exchange_guid = coalesce(r.guid, d.exchange_guid),
    is_internal = coalesce(r.is_internal, d.is_internal), settings = coalesce(r.settings, d.settings)
FROM jsonb_to_recordset(%(rows)s::jsonb) AS r(id bigint, status text, error text, present boolean, guid uuid,
                                             is_internal boolean, settings jsonb)
WHERE d.id = r.id
"""


def _same_setting(want: Any, have: Any) -> bool:
    if isinstance(want, str) and isinstance(have, str):
        return want.lower() == have.lower()
    return want == have


def _connector_plan(row: tuple, server: ExchangeServer) -> tuple[int, str, bool, Any]:
    (cid, name, hosts, spaces, want_enabled, want_port, sources, present, guid, have_hosts,
     have_spaces, have_enabled, have_port) = row
    want_hosts = sorted({_smart_host(h) for h in hosts or []})
    want_spaces = sorted({_address_space(s) for s in spaces or []})
    same = (present and want_enabled == have_enabled and want_port == have_port
            and want_hosts == sorted({_smart_host(h) for h in have_hosts or []})
            and want_spaces == sorted({_address_space(s) for s in have_spaces or []}))
    if same:
        return cid, f"send connector {name}", present, None
    if present:
        return cid, f"send connector {name}", present, ("exchange/set_send_connector", {
            "Identity": guid or name, "SmartHosts": want_hosts, "AddressSpaces": want_spaces,
            "Port": want_port, "Enabled": want_enabled})
    return cid, f"send connector {name}", present, ("exchange/new_send_connector", {
        "Name": name, "SmartHosts": want_hosts, "AddressSpaces": want_spaces,
        "SourceTransportServers": list(sources or [server.name]), "Port": want_port, "Enabled": want_enabled})


def _domain_row(state: RemoteDomainState) -> dict:
    return {"name": state.Name, "domain_name": state.DomainName, "guid": str(state.Guid),
            "is_internal": state.IsInternal, "settings": state.settings()}


def _domain_plan(row: tuple, server: ExchangeServer) -> tuple[int, str, bool, Any]:
    cid, name, domain, desired, present, guid, have = row
    try:
        want = validated_settings(desired, REMOTE_DOMAIN_SETTINGS, f"remote domain {domain}")
    except ValueError as exc:
        return cid, f"remote domain {domain}", present, str(exc)
    have = have or {}
    if present and all(_same_setting(v, have.get(k)) for k, v in want.items()):
        return cid, f"remote domain {domain}", present, None
    if present:
        return cid, f"remote domain {domain}", present, ("exchange/set_remote_domain", {"Identity": guid, **want})
    return cid, f"remote domain {domain}", present, ("exchange/new_remote_domain",
                                                     {"Name": name, "DomainName": domain, **want})


@dataclass(frozen=True)
class _Kind:
    """One kind of Exchange object the panel syncs both ways.

    ``plan(managed_row, server)`` → (id, name for the summary, present on Exchange, what to do):
    None when in sync, a text when the panel's desired state is invalid, else (script, parameters).
    """

    read_script: str
    model: type[Record]
    what: str
    observed_sql: str
    managed_sql: str
    outcomes_sql: str
    row_of: Callable[[Any], dict]
    plan: Callable[[tuple, ExchangeServer], tuple[int, str, bool, Any]]


_CONNECTORS = _Kind("exchange/get_send_connectors", SendConnectorState, "send connector", _CONNECTORS_OBSERVED,
                    _CONNECTORS_MANAGED, _CONNECTOR_OUTCOMES, _connector_row, _connector_plan)
_DOMAINS = _Kind("exchange/get_remote_domains", RemoteDomainState, "remote domain", _DOMAINS_OBSERVED,
                 _DOMAINS_MANAGED, _DOMAIN_OUTCOMES, _domain_row, _domain_plan)


def _sync_both_ways(panel_db, interval, log, kind: _Kind) -> dict:
    """Exchange → panel (every object Exchange reports, in one statement), then panel → Exchange (each
    managed object created or set when it differs); outcomes are written even when a server times out."""
    from psycopg.types.json import Jsonb

    report = StepReport().zero("observed", "new_on_exchange", "gone_from_exchange", "dropped", "created", "updated",
                               "in_sync", "failed")
    with panel_db.get_conn() as conn:
        conn.autocommit = True

        def work(server: ExchangeServer, hook: PowerShellHook) -> None:
            observed = parse_records(kind.model, hook.run_script(kind.read_script), report, kind.what)
            new, seen, gone, dropped = conn.execute(kind.observed_sql, {
                "server": server.id, "at": interval.end, "rows": Jsonb([kind.row_of(o) for o in observed])}).fetchone()
            report.add("observed", seen)
            report.add("new_on_exchange", new)
            report.add("gone_from_exchange", gone)
            report.add("dropped", dropped)
            outcomes: list[dict] = []
            try:
                for row in conn.execute(kind.managed_sql, (server.id,)).fetchall():
                    cid, name, present, action = kind.plan(row, server)
                    if action is None:
                        outcomes.append({"id": cid, "status": "in_sync", "error": None})
                        report.add("in_sync")
                        continue
                    state, error = (None, action) if isinstance(action, str) else apply_one(hook, kind.model, *action)
                    if error is not None:
                        outcomes.append({"id": cid, "status": "failed", "error": error})
                        refused(report, error, name)
                        continue
                    outcomes.append({"id": cid, "status": "in_sync", "error": None, "present": True,
                                     **kind.row_of(state)})
                    report.add("updated" if present else "created")
            finally:
                if outcomes:
                    conn.execute(kind.outcomes_sql, {"at": interval.end, "rows": Jsonb(outcomes)})

        each_server(exchange_servers(conn), report, log, work, count_done=True)
    return report.as_dict()


def sync_smart_host_send_connectors(panel_db, interval, params, log) -> dict:
    """Sync smart host send connectors."""
    return _sync_both_ways(panel_db, interval, log, _CONNECTORS)


def sync_external_remote_domains(panel_db, interval, params, log) -> dict:
    """Sync external remote domains."""
    return _sync_both_ways(panel_db, interval, log, _DOMAINS)
