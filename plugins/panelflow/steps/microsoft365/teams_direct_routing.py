"""Office365Work step 4, "Renew O365 tenant direct routing and tokens": each tenant's Teams direct
routing kept as the panel wants it, through a Teams session renewed with new tokens.

Why PowerShell. Teams direct routing (online PSTN gateways = the provider's SBCs, PSTN usages,
voice routes) has no Microsoft Graph v1.0 API; Microsoft manages it only through the MicrosoftTeams
PowerShell module (``Get-/Set-/New-CsOnlinePSTNGateway``, ``Get-/Set-CsOnlinePstnUsages``,
``Get-/Set-/New-CsOnlineVoiceRoute``, ``Get-CsTenant``). The module runs on a Windows "Teams
management" host that the panel reaches over PowerShell remoting (PSRP), one Airflow ``psrp``
connection per host: ``teams_direct_routing.psrp_conn_id``, else the run's
``params["teams_psrp_conn_id"]``, else ``teams_powershell``. Every operation is a script of
``include/powershell/teams/`` run by :class:`~panelflow.hooks.powershell.PowerShellHook` with its
values as PSRP parameters.

What the panel wants (migration 0020): ``teams_direct_routing`` (per tenant: PSTN usage, voice
route, number pattern, priority) and ``teams_sbcs`` (per SBC: FQDN, SIP signalling port, maximum
concurrent sessions, enabled). A tenant without such rows (or without SBCs) is not touched.

"and tokens" — the tenant's Teams session. A tenant is due when it has no session yet, its last
one failed, what the panel wants changed since the last clean session (an md5 of the desired
configuration, compared in SQL), or its session is older than ``teams_session_renew_minutes``
(55: about once per token lifetime; 0 renews every run). Reconnecting every tenant to Teams each
5-minute run would cost a ``Connect-MicrosoftTeams`` per tenant per run for nothing; the periodic
renewal still proves, about hourly, that the tenant's consent for the Teams admin API holds, and
repairs drift (an SBC someone changed in the Teams admin center). For each due tenant, oldest
session first, up to ``teams_tenants_per_run`` (25):

1. Two new access tokens through the tenant's own Graph connection (``m365_tenants.conn_id``,
   client credentials, :func:`obtain_teams_tokens`): Microsoft Graph (the connection's scope) and
   the Teams tenant admin API (``48ac35b8-9aa8-4d74-927d-1f4a14a0b239/.default``) — the pair
   ``Connect-MicrosoftTeams -AccessTokens`` takes for application-based access. The connection must
   be the tenant's (its ``tenant_id`` extra equal to the row's), or the tenant is failed.
2. One runspace pool on the host per tenant (closed afterwards, so no tenant's tokens or context
   outlive its session): ``teams/connect`` (the tokens as parameters; answers ``Get-CsTenant``,
   which must be the same tenant), ``teams/get_direct_routing`` (gateways, usages, the route),
   then only the differences — ``teams/new_pstn_gateway`` / ``teams/set_pstn_gateway`` with only
   the settings that differ, ``teams/add_pstn_usage``, ``teams/new_voice_route`` /
   ``teams/set_voice_route`` (the route's gateways: the tenant's SBCs that exist in Teams; its
   usages: exactly the panel's one PSTN usage) —
   a second read when anything changed, and ``teams/disconnect``.
3. Recorded: the renewal (time, both tokens' expiry laid on ``interval.end`` by the lifetime they
   had, count, host) as soon as the session is connected; every gateway Teams reports
   (``teams_pstn_gateways``: managed or not — others are reported, never changed or removed); the
   route, the changes made and the configuration left in place (``teams_direct_routing_sessions``).

Why the comparison is here and not in one script: the decision "what differs" is Python, tested
against recorded Teams answers; the scripts stay single cmdlets with typed parameters. A rerun with
nothing changed therefore sends no ``Set-``/``New-`` script at all — visible at the PSRP boundary.

Secrets. Outside the credential's own in-process cache, the step holds the tokens only for the
tenant's session; they travel only as PSRP parameters (inside WinRM's encrypted transport: HTTPS or
NTLM/Kerberos message encryption), are registered with Airflow's secrets masker, and are
replaced by ``[token]`` in every text this step keeps or logs (errors from the host included).
pypsrp logs every PSRP message it packs at DEBUG — the CreatePipeline with the parameters — so
its loggers are held at INFO for the session (:func:`_wire_log_quiet`), and the host's stream
records PsrpHook logs are redacted too (:func:`_tenant_powershell`). No token reaches the DB, the
summary, a log line or an exception.

Failures. A tenant whose token request fails (credentials refused, connection missing), whose
connect is refused or answers for another tenant, or whose read fails is recorded
(``last_error``) and skipped; the others are processed. An SBC or route change Teams refuses (a
domain not verified in the tenant …) is reported; the rest of the tenant is still converged and
the tenant stays due. The host unreachable (timeout, refused, WinRM auth) or its connection
unusable defers every remaining tenant of that host without requesting their tokens. The step
raises only when every due tenant failed or was deferred.

Clock: ``interval.end`` (renewals, expiries, observations, errors).

Not built: the voice routing policy and its assignment to users (user provisioning, not the
tenant's routing), and removing gateways or routes the panel no longer lists (deleting an SBC drops
live calls: an operator's decision).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from panelflow.step import StepReport

TEAMS_SCOPE = "48ac35b8-9aa8-4d74-927d-1f4a14a0b239/.default"
DEFAULT_PSRP_CONN = "teams_powershell"
RENEW_MINUTES = 55
TENANTS_PER_RUN = 25
REDACTED = "[token]"


# -- tokens --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TeamsTokens:
    """The pair ``Connect-MicrosoftTeams -AccessTokens`` takes; never printed (``repr`` hides them)."""
    graph: str = field(repr=False)
    teams: str = field(repr=False)
    graph_lifetime: float
    teams_lifetime: float

    def secrets(self) -> tuple[str, str]:
        return self.graph, self.teams


async def obtain_teams_tokens(hook) -> TeamsTokens:
    """New Graph and Teams tokens for the tenant of ``hook`` (a :class:`MicrosoftGraphHook`).

    Built on the hook's token API rather than changing the hook: ``renew_token()`` gives the Graph
    token (the connection's scope) after dropping the process's cached loopback token, and the
    same credential — the one the hook's adapter holds — is asked for the Teams resource. With
    azure-identity (production) each run's event loop builds a new adapter and so a new
    credential, whose cache is empty: both tokens are new. Errors as the hook's: refused
    credentials :class:`GraphAuthenticationError`, token endpoint unreachable :class:`GraphUnavailable`.
    """
    from azure.core.exceptions import ClientAuthenticationError, ServiceRequestError

    from panelflow.hooks.microsoft_graph import GraphAuthenticationError, GraphUnavailable

    graph = await hook.renew_token()
    provider = (await hook.get_async_conn())._authentication_provider.access_token_provider
    try:
        teams = await provider._credentials.get_token(TEAMS_SCOPE)
    except ClientAuthenticationError as exc:
        raise GraphAuthenticationError(
            f"{hook.conn_id}: tenant {hook.tenant_id}: Teams admin API token refused: {exc.message}") from exc
    except ServiceRequestError as exc:
        raise GraphUnavailable(f"{hook.conn_id}: tenant {hook.tenant_id}: token endpoint: {exc}") from exc
    now = time.time()
    return TeamsTokens(graph.token, teams.token, max(0.0, float(graph.expires_on) - now),
                       max(0.0, float(teams.expires_on) - now))


def _tenant_tokens(tenant: str, conn_id: str) -> TeamsTokens:
    from panelflow.hooks.microsoft_graph import GraphError, MicrosoftGraphHook

    async def go() -> TeamsTokens:
        hook = MicrosoftGraphHook(conn_id)
        async with hook:
            tokens = await obtain_teams_tokens(hook)
            reached = str(hook.tenant_id or "").lower()
        if reached != tenant:
            raise TenantFailed(f"connection {conn_id} is for tenant {reached or '?'}, not {tenant}")
        return tokens

    try:
        return asyncio.run(go())
    except TenantFailed:
        raise
    except GraphError as exc:
        raise TenantFailed(str(exc)) from None
    except Exception as exc:  # a connection that does not exist or cannot be read
        raise TenantFailed(f"{conn_id}: {type(exc).__name__}: {exc}") from None


def _mask(tokens: TeamsTokens) -> None:
    try:
        from airflow.sdk.log import mask_secret

        for secret in tokens.secrets():
            mask_secret(secret)
    except Exception:  # noqa: BLE001 - masking is a safeguard, not a precondition
        pass


def _redact(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    return text


def _tenant_powershell(psrp_conn_id: str, secrets: tuple[str, ...]):
    """A :class:`PowerShellHook` for one tenant's session whose log of the host's streams (the error,
    warning and verbose records PsrpHook logs at INFO) has the tenant's tokens replaced: a host
    that echoes a parameter in an error must not put a token in the task log."""
    from panelflow.hooks.powershell import PowerShellHook

    class TenantPowerShell(PowerShellHook):
        def _log_record(self, log, record):
            def redacting(level, msg, *args):
                try:
                    text = msg % args if args else str(msg)
                except (TypeError, ValueError):
                    text = " ".join(str(a) for a in (msg, *args))
                log(level, "%s", _redact(text, secrets))

            super()._log_record(redacting, record)

    return TenantPowerShell(psrp_conn_id)


@contextmanager
def _wire_log_quiet() -> Iterator[None]:
    """pypsrp's loggers at INFO or above for the block: at DEBUG they print each PSRP message
    (``Packing PSRP message: <CLIXML>``, the WSMan envelope), parameters — tokens — included."""
    names = ["pypsrp"] + [n for n in list(logging.root.manager.loggerDict) if n.startswith("pypsrp.")]
    saved = []
    for name in names:
        logger = logging.getLogger(name)
        saved.append((logger, logger.level))
        if logger.level == logging.NOTSET or logger.level < logging.INFO:
            logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        for logger, level in saved:
            logger.setLevel(level)


# -- what the panel wants, what Teams has ----------------------------------------------------------

@dataclass(frozen=True)
class Sbc:
    fqdn: str
    sip_signaling_port: int
    max_concurrent_sessions: int | None
    enabled: bool


@dataclass(frozen=True)
class DesiredRouting:
    pstn_usage: str
    voice_route: str
    number_pattern: str
    route_priority: int
    sbcs: tuple[Sbc, ...]

    @classmethod
    def from_config(cls, config: dict) -> DesiredRouting:
        return cls(config["pstn_usage"], config["voice_route"], config["number_pattern"], int(config["route_priority"]),
                   tuple(Sbc(s["fqdn"], int(s["sip_signaling_port"]), s["max_concurrent_sessions"], bool(s["enabled"]))
                         for s in config["sbcs"]))


class GatewayRecord(BaseModel):
    """One ``Get-CsOnlinePSTNGateway`` object as teams/get_direct_routing.ps1 prints it."""
    model_config = ConfigDict(extra="ignore")

    Identity: str = Field(min_length=1)
    Fqdn: str | None = None
    SipSignalingPort: int = Field(ge=1, le=65535)
    MaxConcurrentSessions: int | None = None
    Enabled: bool
    FailoverTimeSeconds: int | None = None
    ForwardCallHistory: bool | None = None
    ForwardPai: bool | None = None
    SendSipOptions: bool | None = None
    MediaBypass: bool | None = None

    @property
    def fqdn(self) -> str:
        return (self.Fqdn or self.Identity).strip().lower()


class VoiceRouteRecord(BaseModel):
    model_config = ConfigDict(extra="ignore")

    Identity: str = Field(min_length=1)
    NumberPattern: str
    Priority: int
    OnlinePstnGatewayList: list[str] = []
    OnlinePstnUsages: list[str] = []


class RoutingAnswer(BaseModel):
    model_config = ConfigDict(extra="ignore")

    Gateways: list[Any] = []
    PstnUsages: list[str] = []
    VoiceRoute: VoiceRouteRecord | None = None


@dataclass
class TeamsRouting:
    gateways: dict[str, GatewayRecord]
    usages: list[str]
    route: VoiceRouteRecord | None


class TenantFailed(Exception):
    """This tenant cannot be worked this run (tokens, connect, read): recorded, the others go on."""


class HostDown(Exception):
    """The Teams management host cannot be used: every remaining tenant on it is deferred."""


# -- SQL -----------------------------------------------------------------------------------------

_DUE = """
WITH desired AS (
    SELECT d.tenant_id, t.conn_id, coalesce(d.psrp_conn_id, %(default_psrp)s) AS psrp_conn_id,
           jsonb_build_object(
               'pstn_usage', d.pstn_usage, 'voice_route', d.voice_route, 'number_pattern', d.number_pattern,
               'route_priority', d.route_priority,
               'sbcs', jsonb_agg(jsonb_build_object('fqdn', s.fqdn, 'sip_signaling_port', s.sip_signaling_port,
                                                    'max_concurrent_sessions', s.max_concurrent_sessions,
                                                    'enabled', s.enabled) ORDER BY s.fqdn)) AS config
    FROM teams_direct_routing d
    JOIN m365_tenants t ON t.tenant_id = d.tenant_id AND t.enabled
    JOIN teams_sbcs s ON s.tenant_id = d.tenant_id
    WHERE d.enabled
    GROUP BY d.tenant_id, t.conn_id
)
SELECT x.tenant_id::text, x.conn_id, x.psrp_conn_id, x.config, md5(x.config::text)
FROM desired x LEFT JOIN teams_direct_routing_sessions k ON k.tenant_id = x.tenant_id
WHERE k.renewed_at IS NULL OR k.last_error IS NOT NULL
   OR k.applied_config IS DISTINCT FROM md5(x.config::text)
   OR k.renewed_at <= %(renew_by)s
ORDER BY k.renewed_at NULLS FIRST, x.tenant_id
LIMIT %(limit)s
"""

_RENEWED = """
INSERT INTO teams_direct_routing_sessions AS k (tenant_id, psrp_conn_id, teams_tenant_name, renewed_at,
                                                graph_token_expires_at, teams_token_expires_at, renewals)
VALUES (%(tenant)s::uuid, %(psrp)s, %(name)s, %(at)s, %(graph_expires)s, %(teams_expires)s, 1)
ON CONFLICT (tenant_id) DO UPDATE SET psrp_conn_id = EXCLUDED.psrp_conn_id,
    teams_tenant_name = EXCLUDED.teams_tenant_name, renewed_at = EXCLUDED.renewed_at,
    graph_token_expires_at = EXCLUDED.graph_token_expires_at,
    teams_token_expires_at = EXCLUDED.teams_token_expires_at, renewals = k.renewals + 1
"""

_CONVERGED = """
UPDATE teams_direct_routing_sessions
SET applied_config = %(applied)s, last_changes = %(changes)s, voice_route = %(route)s,
    last_error = %(error)s::text, last_error_at = CASE WHEN %(error)s::text IS NULL THEN NULL ELSE %(at)s END
WHERE tenant_id = %(tenant)s::uuid
"""

_FAILED = """
INSERT INTO teams_direct_routing_sessions AS k (tenant_id, last_error, last_error_at)
VALUES (%(tenant)s::uuid, %(error)s, %(at)s)
ON CONFLICT (tenant_id) DO UPDATE SET last_error = EXCLUDED.last_error, last_error_at = EXCLUDED.last_error_at
"""

# one statement: the tenant's gateways become exactly what Teams reported (changed_at kept unless changed now)
_GATEWAYS = """
WITH seen AS (
    SELECT * FROM jsonb_to_recordset(%(rows)s::jsonb) AS r(
        fqdn text, sip_signaling_port integer, max_concurrent_sessions integer, enabled boolean,
        failover_time_seconds integer, forward_call_history boolean, forward_pai boolean,
        send_sip_options boolean, media_bypass boolean, changed boolean)
), gone AS (
    DELETE FROM teams_pstn_gateways g
    WHERE g.tenant_id = %(tenant)s::uuid AND NOT EXISTS (SELECT 1 FROM seen WHERE seen.fqdn = g.fqdn)
)
INSERT INTO teams_pstn_gateways AS g (tenant_id, fqdn, sip_signaling_port, max_concurrent_sessions, enabled,
    failover_time_seconds, forward_call_history, forward_pai, send_sip_options, media_bypass, managed,
    observed_at, changed_at)
SELECT %(tenant)s::uuid, s.fqdn, s.sip_signaling_port, s.max_concurrent_sessions, s.enabled,
       s.failover_time_seconds, s.forward_call_history, s.forward_pai, s.send_sip_options, s.media_bypass,
       EXISTS (SELECT 1 FROM teams_sbcs c WHERE c.tenant_id = %(tenant)s::uuid AND c.fqdn = s.fqdn),
       %(at)s, CASE WHEN s.changed THEN %(at)s END
FROM seen s
ON CONFLICT (tenant_id, fqdn) DO UPDATE SET sip_signaling_port = EXCLUDED.sip_signaling_port,
    max_concurrent_sessions = EXCLUDED.max_concurrent_sessions, enabled = EXCLUDED.enabled,
    failover_time_seconds = EXCLUDED.failover_time_seconds, forward_call_history = EXCLUDED.forward_call_history,
    forward_pai = EXCLUDED.forward_pai, send_sip_options = EXCLUDED.send_sip_options,
    media_bypass = EXCLUDED.media_bypass, managed = EXCLUDED.managed, observed_at = EXCLUDED.observed_at,
    changed_at = coalesce(EXCLUDED.changed_at, g.changed_at)
"""


# -- one run -------------------------------------------------------------------------------------

class _Run:
    def __init__(self, conn, at, report: StepReport, log):
        self.conn, self.at, self.report, self.log = conn, at, report, log
        self.failed: list[str] = []
        self.deferred: list[str] = []

    # recording
    def fail(self, tenant: str, error: str, *, deferred: bool = False) -> None:
        error = error.strip() or "failed"
        self.conn.execute(_FAILED, {"tenant": tenant, "error": error[:2000], "at": self.at})
        (self.deferred if deferred else self.failed).append(tenant)
        self.report.add("deferred" if deferred else "failed")
        self.report.skip(error.splitlines()[0][:300], f"tenant {tenant}")
        self.log.warning("teams direct routing: tenant %s %s: %s", tenant, "deferred" if deferred else "failed", error)

    def renewed(self, tenant: str, psrp: str, name: str | None, tokens: TeamsTokens) -> None:
        self.conn.execute(_RENEWED, {"tenant": tenant, "psrp": psrp, "name": name, "at": self.at,
                                     "graph_expires": self.at + timedelta(seconds=tokens.graph_lifetime),
                                     "teams_expires": self.at + timedelta(seconds=tokens.teams_lifetime)})
        self.report.add("renewed")

    def converged(self, tenant: str, config_md5: str, routing: TeamsRouting, changed: set[str],
                  changes: list[str], errors: list[str]) -> None:
        from psycopg.types.json import Jsonb

        rows = [{"fqdn": f, "sip_signaling_port": g.SipSignalingPort, "max_concurrent_sessions": g.MaxConcurrentSessions,
                 "enabled": g.Enabled, "failover_time_seconds": g.FailoverTimeSeconds,
                 "forward_call_history": g.ForwardCallHistory, "forward_pai": g.ForwardPai,
                 "send_sip_options": g.SendSipOptions, "media_bypass": g.MediaBypass, "changed": f in changed}
                for f, g in sorted(routing.gateways.items())]
        self.conn.execute(_GATEWAYS, {"tenant": tenant, "rows": Jsonb(rows), "at": self.at})
        error = "; ".join(errors)[:2000] if errors else None
        route = routing.route.model_dump() if routing.route is not None else None
        self.conn.execute(_CONVERGED, {"tenant": tenant, "applied": None if errors else config_md5,
                                       "changes": Jsonb(changes), "route": Jsonb(route) if route else None,
                                       "error": error, "at": self.at})
        self.report.add("changed_tenants" if changes else "unchanged_tenants")
        if errors:
            self.report.add("partly_failed_tenants")

    # one tenant's session on its host
    def session(self, tenant: str, psrp_conn_id: str, desired: DesiredRouting, config_md5: str,
                tokens: TeamsTokens) -> None:
        from airflow.exceptions import AirflowException

        from panelflow.hooks.powershell import (PowerShellError, PowerShellOutputError, PowerShellScriptError,
                                                PowerShellUnavailable, _is_transport_error)

        secrets = tokens.secrets()
        with _wire_log_quiet():
            hook = _tenant_powershell(psrp_conn_id, secrets)
            try:
                hook.__enter__()      # opens the tenant's own runspace pool
            except Exception as exc:
                if _is_transport_error(exc):
                    raise HostDown(f"{psrp_conn_id}: {type(exc).__name__}: {_redact(str(exc), secrets)}") from None
                raise HostDown(f"{psrp_conn_id}: connection not usable: {type(exc).__name__}: "
                               f"{_redact(str(exc), secrets)}") from None
            connected = host_down = False
            try:
                try:
                    answer = hook.run_script("teams/connect", {"TenantId": tenant, "GraphToken": tokens.graph,
                                                               "TeamsToken": tokens.teams})
                    connected = True
                    answer = _one(answer, "teams/connect")
                    reached = str(answer.get("TenantId") or "").strip().lower()
                    if reached != tenant:
                        raise TenantFailed(f"Teams answered for tenant {reached or '?'}, not {tenant}")
                    self.renewed(tenant, psrp_conn_id, answer.get("DisplayName") or None, tokens)
                    routing = self._read(hook, desired)
                    changes, errors, changed = _converge(hook, desired, routing, self.report)
                    if changes:
                        routing = self._read(hook, desired)
                    errors = [_redact(e, secrets) for e in errors]
                    self.converged(tenant, config_md5, routing, changed, changes, errors)
                    for e in errors:
                        self.report.skip(e.splitlines()[0][:300], f"tenant {tenant}")
                    self.log.info("teams direct routing: tenant %s renewed on %s; %s%s", tenant, psrp_conn_id,
                                  "; ".join(changes) or "already as wanted",
                                  f"; refused: {'; '.join(errors)}" if errors else "")
                except PowerShellUnavailable as exc:
                    host_down = True
                    raise HostDown(_redact(str(exc), secrets)) from None
                except AirflowException as exc:   # the connection's configuration (unknown extras …)
                    host_down = True
                    raise HostDown(f"{psrp_conn_id}: {type(exc).__name__}: {_redact(str(exc), secrets)}") from None
                except (PowerShellScriptError, PowerShellOutputError, TenantFailed) as exc:
                    raise TenantFailed(_redact(str(exc), secrets)) from None
                except ValueError as exc:     # an answer that is not what the script prints
                    raise TenantFailed(_redact(str(exc), secrets)) from None
            finally:
                if connected and not host_down:
                    try:
                        hook.run_script("teams/disconnect")
                    except PowerShellError as exc:   # the pool is closed next anyway
                        self.log.warning("teams direct routing: tenant %s: disconnect: %s", tenant,
                                         _redact(str(exc), secrets))
                try:
                    hook.__exit__(None, None, None)
                except Exception as exc:  # noqa: BLE001 - closing a pool the host already dropped
                    self.log.warning("teams direct routing: closing the runspace pool on %s: %s", psrp_conn_id,
                                     _redact(f"{type(exc).__name__}: {exc}", secrets))

    def _read(self, hook, desired: DesiredRouting) -> TeamsRouting:
        from panelflow.hooks.powershell import parse_records

        answer = RoutingAnswer.model_validate(_one(hook.run_script("teams/get_direct_routing",
                                                                   {"VoiceRoute": desired.voice_route}),
                                                   "teams/get_direct_routing"))
        gateways: dict[str, GatewayRecord] = {}
        for g in parse_records(GatewayRecord, answer.Gateways, self.report, what="gateway"):
            gateways.setdefault(g.fqdn, g)
        return TeamsRouting(gateways, answer.PstnUsages, answer.VoiceRoute)


def _one(rows: list, script: str) -> dict:
    if len(rows) != 1 or not isinstance(rows[0], dict):
        raise ValueError(f"{script}: expected one object, got {json.dumps(rows)[:200]}")
    return rows[0]


def _converge(hook, desired: DesiredRouting, teams: TeamsRouting, report: StepReport) -> tuple[list[str], list[str], set[str]]:
    """Send only what differs → (changes made, changes Teams refused, gateways created or changed)."""
    from panelflow.hooks.powershell import PowerShellOutputError, PowerShellScriptError

    changes: list[str] = []
    errors: list[str] = []
    changed: set[str] = set()

    def run(script: str, parameters: dict, what: str, counter: str) -> bool:
        try:
            hook.run_script(script, parameters)
        except (PowerShellScriptError, PowerShellOutputError) as exc:
            errors.append(f"{what}: {exc}")
            return False
        changes.append(what)
        report.add(counter)
        return True

    present = set(teams.gateways)
    for sbc in desired.sbcs:
        have = teams.gateways.get(sbc.fqdn)
        if have is None:
            if run("teams/new_pstn_gateway",
                   {"Fqdn": sbc.fqdn, "SipSignalingPort": sbc.sip_signaling_port, "Enabled": sbc.enabled,
                    "MaxConcurrentSessions": sbc.max_concurrent_sessions},
                   f"New-CsOnlinePSTNGateway {sbc.fqdn}", "gateways_created"):
                present.add(sbc.fqdn)
                changed.add(sbc.fqdn)
            continue
        diff: dict[str, Any] = {}
        if have.SipSignalingPort != sbc.sip_signaling_port:
            diff["SipSignalingPort"] = (have.SipSignalingPort, sbc.sip_signaling_port)
        if sbc.max_concurrent_sessions is not None and have.MaxConcurrentSessions != sbc.max_concurrent_sessions:
            diff["MaxConcurrentSessions"] = (have.MaxConcurrentSessions, sbc.max_concurrent_sessions)
        if have.Enabled != sbc.enabled:
            diff["Enabled"] = (have.Enabled, sbc.enabled)
        if diff:
            what = f"Set-CsOnlinePSTNGateway {sbc.fqdn}: " + ", ".join(f"{k} {a} -> {b}" for k, (a, b) in diff.items())
            if run("teams/set_pstn_gateway", {"Identity": have.Identity, **{k: b for k, (_, b) in diff.items()}},
                   what, "gateways_updated"):
                changed.add(sbc.fqdn)

    usage_ready = desired.pstn_usage.lower() in {u.lower() for u in teams.usages}
    if not usage_ready:
        usage_ready = run("teams/add_pstn_usage", {"Usage": desired.pstn_usage},
                          f"Set-CsOnlinePstnUsages Global: add {desired.pstn_usage}", "usages_added")

    targets = sorted(s.fqdn for s in desired.sbcs if s.fqdn in present)
    if not targets:
        errors.append(f"voice route {desired.voice_route}: none of the tenant's SBCs exists in Teams")
    elif usage_ready:
        route = teams.route
        if route is None:
            run("teams/new_voice_route",
                {"Identity": desired.voice_route, "NumberPattern": desired.number_pattern,
                 "Priority": desired.route_priority, "OnlinePstnGatewayList": targets,
                 "PstnUsage": desired.pstn_usage},
                f"New-CsOnlineVoiceRoute {desired.voice_route}", "routes_created")
        else:
            diff = {}
            if route.NumberPattern != desired.number_pattern:
                diff["NumberPattern"] = desired.number_pattern
            if route.Priority != desired.route_priority:
                diff["Priority"] = desired.route_priority
            if sorted({g.strip().lower() for g in route.OnlinePstnGatewayList}) != targets:
                diff["OnlinePstnGatewayList"] = targets
            if {u.lower() for u in route.OnlinePstnUsages} != {desired.pstn_usage.lower()}:
                diff["PstnUsage"] = desired.pstn_usage
            if diff:
                run("teams/set_voice_route", {"Identity": route.Identity, **diff},
                    f"Set-CsOnlineVoiceRoute {route.Identity}: {', '.join(diff)}", "routes_updated")
    return changes, errors, changed


def renew_direct_routing_tokens(panel_db, interval, params, log) -> dict:
    """Renew O365 tenant direct routing and tokens."""
    params = params or {}
    log = log or logging.getLogger(__name__)
    at = interval.end
    default_psrp = str(params.get("teams_psrp_conn_id") or DEFAULT_PSRP_CONN)
    renew_by = at - timedelta(minutes=int(params.get("teams_session_renew_minutes", RENEW_MINUTES)))
    limit = int(params.get("teams_tenants_per_run", TENANTS_PER_RUN))
    report = StepReport().zero("due", "renewed", "unchanged_tenants", "changed_tenants", "gateways_created",
                               "gateways_updated", "usages_added", "routes_created", "routes_updated",
                               "partly_failed_tenants", "failed", "deferred")
    with panel_db.get_conn() as conn:
        conn.autocommit = True
        due = conn.execute(_DUE, {"default_psrp": default_psrp, "renew_by": renew_by, "limit": limit}).fetchall()
        report.add("due", len(due))
        run = _Run(conn, at, report, log)
        down: dict[str, str] = {}
        for tenant, conn_id, psrp_conn_id, config, config_md5 in due:
            if psrp_conn_id in down:
                run.fail(tenant, f"deferred: Teams management host {psrp_conn_id} unusable: {down[psrp_conn_id]}",
                         deferred=True)
                continue
            try:
                tokens = _tenant_tokens(tenant, conn_id)
            except TenantFailed as exc:
                run.fail(tenant, f"tokens: {exc}")
                continue
            _mask(tokens)
            try:
                run.session(tenant, psrp_conn_id, DesiredRouting.from_config(config), config_md5, tokens)
            except TenantFailed as exc:
                run.fail(tenant, str(exc))
            except HostDown as exc:
                down[psrp_conn_id] = str(exc).splitlines()[0][:300]
                run.fail(tenant, f"deferred: Teams management host {psrp_conn_id} unusable: {exc}", deferred=True)
    out = report.as_dict()
    out["failed_tenants"], out["deferred_tenants"] = run.failed, run.deferred
    if due and len(run.failed) + len(run.deferred) == len(due):
        raise RuntimeError(f"no tenant's Teams direct routing could be renewed ({len(run.failed)} failed, "
                           f"{len(run.deferred)} deferred): {out['skipped_examples'][:3]}")
    return out
