"""Office365Work step 4 (panelflow.steps.microsoft365.teams_direct_routing): tokens from the loopback Microsoft
sandbox through each tenant's Graph connection, Teams direct routing at the PSRP boundary (the real
PsrpHook/pypsrp messages decoded; Teams' answers are what our scripts print on a real host), state
into the real panel DB."""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta, timezone
from urllib.parse import parse_qs

import pytest

from panelflow.step import Interval

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=timezone.utc)
GRAPH_SCOPE = "https://graph.microsoft.com/.default"
TEAMS_SCOPE = "48ac35b8-9aa8-4d74-927d-1f4a14a0b239/.default"
OWN_TABLES = ("teams_direct_routing_sessions", "teams_pstn_gateways", "teams_sbcs", "teams_direct_routing",
              "m365_tenant_tokens", "m365_tenants")
PATTERN = r"^\+44(\d{10})$"


def _modules():
    from sandbox import microsoft as ms

    return ms, ms.load("microsoft_graph")


class ScopedIssuer:
    """In front of the sandbox's token endpoint: which token went to which tenant for which scope."""

    def __init__(self, issuer):
        self.issuer = issuer
        self.issued: list[tuple[str, str, str]] = []     # (tenant, scope, token)

    def handle(self, req):
        resp = self.issuer.handle(req)
        if resp is not None and resp.status == 200:
            scope = parse_qs(req.body.decode()).get("scope", [""])[0]
            self.issued.append((req.path.strip("/").split("/")[0], scope, resp.body["access_token"]))
        return resp

    def token(self, tenant, scope, nth=-1):
        return [t for te, s, t in self.issued if te == tenant and s == scope][nth]

    def tokens(self) -> list[str]:
        return [t for _, _, t in self.issued]


class FakeTeams:
    """The Teams admin side of each tenant, answering our scripts with what they print on a real host
    (``ConvertTo-Json`` of the objects after the script's projection); the tenant a session reaches is
    the one its Teams token was issued for."""

    def __init__(self, ps, issuer: ScopedIssuer):
        self.ps, self.issuer = ps, issuer
        self.tenants: dict[str, dict] = {}
        self.connected: str | None = None
        for script, answer in (("teams/connect", self._connect), ("teams/get_direct_routing", self._get),
                               ("teams/new_pstn_gateway", self._new_gateway),
                               ("teams/set_pstn_gateway", self._set_gateway),
                               ("teams/add_pstn_usage", self._add_usage), ("teams/new_voice_route", self._new_route),
                               ("teams/set_voice_route", self._set_route), ("teams/disconnect", self._disconnect)):
            ps.answer(script, answer)

    def tenant(self, tenant, name="Contoso", gateways=(), usages=("Internal",), routes=()):
        self.tenants[tenant] = {"name": name, "gateways": {g["Identity"]: dict(g) for g in gateways},
                                "usages": list(usages), "routes": {r["Identity"]: dict(r) for r in routes}}
        return self.tenants[tenant]

    def _t(self):
        return self.tenants[self.connected]

    def _connect(self, sent):
        self.connected = next(te for te, _, t in self.issuer.issued if t == sent.parameters["TeamsToken"])
        return [{"TenantId": self.connected, "DisplayName": self._t()["name"]}]

    def _get(self, sent):
        t = self._t()
        route = t["routes"].get(sent.parameters["VoiceRoute"])
        return [{"Gateways": list(t["gateways"].values()), "PstnUsages": list(t["usages"]), "VoiceRoute": route}]

    def _new_gateway(self, sent):
        p = sent.parameters
        self._t()["gateways"][p["Fqdn"]] = gateway(p["Fqdn"], p["SipSignalingPort"], p.get("MaxConcurrentSessions"),
                                                   p["Enabled"])
        return [{"Identity": p["Fqdn"], "Created": True}]

    def _set_gateway(self, sent):
        p = dict(sent.parameters)
        self._t()["gateways"][p.pop("Identity")].update(p)
        return [{"Identity": sent.parameters["Identity"], "Changed": sorted(p)}]

    def _add_usage(self, sent):
        self._t()["usages"].append(sent.parameters["Usage"])
        return [{"Usage": sent.parameters["Usage"], "Added": True}]

    def _new_route(self, sent):
        p = dict(sent.parameters)
        p["OnlinePstnUsages"] = [p.pop("PstnUsage")]
        self._t()["routes"][p["Identity"]] = p
        return [{"Identity": sent.parameters["Identity"], "Created": True}]

    def _set_route(self, sent):
        p = dict(sent.parameters)
        if "PstnUsage" in p:
            p["OnlinePstnUsages"] = [p.pop("PstnUsage")]
        self._t()["routes"][p.pop("Identity")].update(p)
        return [{"Identity": sent.parameters["Identity"], "Changed": sorted(p)}]

    def _disconnect(self, sent):
        self.connected = None
        return None


def gateway(fqdn, port=5061, max_sessions=None, enabled=True, **extra):
    return {"Identity": fqdn, "Fqdn": fqdn, "SipSignalingPort": port, "MaxConcurrentSessions": max_sessions,
            "Enabled": enabled, "FailoverTimeSeconds": 10, "ForwardCallHistory": False, "ForwardPai": False,
            "SendSipOptions": True, "MediaBypass": False, **extra}


def route(name, gateways, usages, pattern=PATTERN, priority=1):
    return {"Identity": name, "NumberPattern": pattern, "Priority": priority, "OnlinePstnGatewayList": list(gateways),
            "OnlinePstnUsages": list(usages)}


@pytest.fixture
def teams(panel_db, sql, monkeypatch, recorded_powershell):
    """``teams(tenants=3)`` → an object with ``.api`` (GraphApi), ``.issuer`` (ScopedIssuer), ``.fake``
    (FakeTeams on the recorded PSRP boundary), ``.ps`` and ``.ids`` (tenant ids, in processing order);
    tenants are Graph connections ``m365_tenant_<i>`` and ``m365_tenants`` rows; the default Teams
    management host is the psrp connection ``teams_powershell`` (host teams-mgmt.test)."""
    ms, mg = _modules()
    sql("TRUNCATE " + ", ".join(OWN_TABLES) + " RESTART IDENTITY CASCADE")
    started = []

    class Env:
        pass

    def start(tenants=3):
        issuer = ms.TokenIssuer()
        api = mg.GraphApi(issuer, tenants=tenants, users_per_tenant=1, groups_per_tenant=1, contacts_per_tenant=1,
                          members_per_group=1)
        scoped = ScopedIssuer(issuer)
        sandbox = ms.MicrosoftSandbox([scoped, api]).start()
        started.append(sandbox)
        env = Env()
        env.api, env.issuer, env.ps, env.url = api, scoped, recorded_powershell, sandbox.url
        env.fake = FakeTeams(recorded_powershell, scoped)
        monkeypatch.setenv("AIRFLOW_CONN_TEAMS_POWERSHELL",
                           recorded_powershell.connection("teams-mgmt.test", ssl=True, auth="negotiate"))
        for i in range(tenants):
            conn = api.connection(i, sandbox.url, backoff=0.01, backoff_max=0.05, timeout=10)
            monkeypatch.setenv(f"AIRFLOW_CONN_M365_TENANT_{i}", json.dumps(conn))
            sql("INSERT INTO m365_tenants (tenant_id, conn_id) VALUES (%s, %s)", (api.tenant_id(i), f"m365_tenant_{i}"))
        env.ids = [api.tenant_id(i) for i in range(tenants)]
        return env

    yield start
    for sandbox in started:
        sandbox.stop()


def _configure(sql, tenant, sbcs, usage="PF-Voice", voice_route="PF-Route", pattern=PATTERN, priority=1, psrp=None):
    sql("INSERT INTO teams_direct_routing (tenant_id, psrp_conn_id, pstn_usage, voice_route, number_pattern,"
        " route_priority) VALUES (%s, %s, %s, %s, %s, %s)", (tenant, psrp, usage, voice_route, pattern, priority))
    for fqdn, port, max_sessions, enabled in sbcs:
        sql("INSERT INTO teams_sbcs (tenant_id, fqdn, sip_signaling_port, max_concurrent_sessions, enabled)"
            " VALUES (%s, %s, %s, %s, %s)", (tenant, fqdn, port, max_sessions, enabled))


def _renew(panel_db, at=T0, log=None, **params):
    from panelflow.steps.microsoft365.teams_direct_routing import renew_direct_routing_tokens

    return renew_direct_routing_tokens(panel_db, Interval(at - timedelta(minutes=5), at), params, log)


def _calls(ps, start=0):
    return [(c.script, c.parameters) for c in ps.sent[start:]]


def _gateways(sql, tenant):
    return sql("SELECT fqdn, sip_signaling_port, max_concurrent_sessions, enabled, managed, observed_at, changed_at"
               " FROM teams_pstn_gateways WHERE tenant_id = %s ORDER BY fqdn", (tenant,))


def _session(sql, tenant):
    rows = sql("SELECT psrp_conn_id, teams_tenant_name, renewed_at, graph_token_expires_at, teams_token_expires_at,"
               " renewals, applied_config, last_changes, voice_route, last_error, last_error_at"
               " FROM teams_direct_routing_sessions WHERE tenant_id = %s", (tenant,))
    keys = ("psrp", "name", "renewed_at", "graph_expires", "teams_expires", "renewals", "applied", "changes", "route",
            "error", "error_at")
    return dict(zip(keys, rows[0])) if rows else None


def _two_tenants(env, sql, monkeypatch):
    """t0: one SBC missing in Teams, one with other limits, an unmanaged gateway, no usage, no route.
    t1 (on its own host): already as wanted. Returns (t0, t1) in processing order."""
    t0, t1 = sorted(env.ids[:2])
    _configure(sql, t0, [("sbc1.voice.example", 5067, 40, True), ("sbc2.voice.example", 5061, 50, True)])
    env.fake.tenant(t0, "Contoso", [gateway("sbc2.voice.example", 5061, 100),
                                    gateway("legacy.other.example", 5060, None, False)])
    monkeypatch.setenv("AIRFLOW_CONN_TEAMS_MGMT_EU", env.ps.connection("teams-eu.test", ssl=True))
    _configure(sql, t1, [("sbc.t1.example", 5061, None, True)], usage="UK", voice_route="UK-Route",
               pattern=".*", priority=2, psrp="teams_mgmt_eu")
    env.fake.tenant(t1, "Fabrikam", [gateway("sbc.t1.example", 5061, 30)], usages=["UK", "Internal"],
                    routes=[route("UK-Route", ["sbc.t1.example"], ["UK"], pattern=".*", priority=2)])
    return t0, t1


def test_each_tenant_is_connected_with_new_tokens_and_only_the_differences_are_sent(teams, panel_db, sql, monkeypatch):
    env = teams(tenants=3)
    t0, t1 = _two_tenants(env, sql, monkeypatch)
    untouched = next(t for t in env.ids if t not in (t0, t1))      # no direct routing configured

    out = _renew(panel_db)

    assert (out["due"], out["renewed"], out["changed_tenants"], out["unchanged_tenants"], out["failed"],
            out["deferred"]) == (2, 2, 1, 1, 0, 0), out
    assert (out["gateways_created"], out["gateways_updated"], out["usages_added"], out["routes_created"],
            out["routes_updated"]) == (1, 1, 1, 1, 0), out
    # tokens: Graph and Teams admin API, per tenant, through its own connection; none for the untouched tenant
    assert sorted((te, s) for te, s, _ in env.issuer.issued) == sorted(
        [(t0, GRAPH_SCOPE), (t0, TEAMS_SCOPE), (t1, GRAPH_SCOPE), (t1, TEAMS_SCOPE)])
    assert untouched not in env.fake.tenants

    connect = {"TenantId": t0, "GraphToken": env.issuer.token(t0, GRAPH_SCOPE),
               "TeamsToken": env.issuer.token(t0, TEAMS_SCOPE)}
    assert _calls(env.ps) == [
        ("teams/connect", connect),
        ("teams/get_direct_routing", {"VoiceRoute": "PF-Route"}),
        ("teams/new_pstn_gateway", {"Fqdn": "sbc1.voice.example", "SipSignalingPort": 5067, "Enabled": True,
                                    "MaxConcurrentSessions": 40}),
        ("teams/set_pstn_gateway", {"Identity": "sbc2.voice.example", "MaxConcurrentSessions": 50}),
        ("teams/add_pstn_usage", {"Usage": "PF-Voice"}),
        ("teams/new_voice_route", {"Identity": "PF-Route", "NumberPattern": PATTERN, "Priority": 1,
                                   "OnlinePstnGatewayList": ["sbc1.voice.example", "sbc2.voice.example"],
                                   "PstnUsage": "PF-Voice"}),
        ("teams/get_direct_routing", {"VoiceRoute": "PF-Route"}),
        ("teams/disconnect", {}),
        ("teams/connect", {"TenantId": t1, "GraphToken": env.issuer.token(t1, GRAPH_SCOPE),
                           "TeamsToken": env.issuer.token(t1, TEAMS_SCOPE)}),
        ("teams/get_direct_routing", {"VoiceRoute": "UK-Route"}),
        ("teams/disconnect", {}),
    ]
    sent = env.ps.sent
    assert all(c.is_script for c in sent)
    assert [c.conn_host for c in sent] == ["teams-mgmt.test"] * 8 + ["teams-eu.test"] * 3    # per-tenant host
    # typed PSRP parameters: the port an Int32, the state a Boolean; the token never inside the script text
    assert '<I32 N="V">5067</I32>' in sent[2].clixml and '<B N="V">true</B>' in sent[2].clixml
    assert connect["TeamsToken"] not in sent[0].command and _on_the_wire(connect["TeamsToken"]) in sent[0].clixml

    assert _gateways(sql, t0) == [
        ("legacy.other.example", 5060, None, False, False, T0, None),   # reported, never changed
        ("sbc1.voice.example", 5067, 40, True, True, T0, T0),
        ("sbc2.voice.example", 5061, 50, True, True, T0, T0),
    ]
    assert _gateways(sql, t1) == [("sbc.t1.example", 5061, 30, True, True, T0, None)]   # limit not managed
    s0 = _session(sql, t0)
    assert (s0["psrp"], s0["name"], s0["renewed_at"], s0["renewals"], s0["error"]) == \
        ("teams_powershell", "Contoso", T0, 1, None)
    for key in ("graph_expires", "teams_expires"):                         # the tokens' lifetime on the clock
        assert abs(s0[key] - (T0 + timedelta(hours=1))) < timedelta(seconds=5)
    assert s0["changes"] == ["New-CsOnlinePSTNGateway sbc1.voice.example",
                             "Set-CsOnlinePSTNGateway sbc2.voice.example: MaxConcurrentSessions 100 -> 50",
                             "Set-CsOnlinePstnUsages Global: add PF-Voice", "New-CsOnlineVoiceRoute PF-Route"]
    assert s0["route"] == route("PF-Route", ["sbc1.voice.example", "sbc2.voice.example"], ["PF-Voice"])
    assert len(s0["applied"]) == 32
    s1 = _session(sql, t1)
    assert (s1["psrp"], s1["name"], s1["renewals"], s1["changes"], s1["error"]) == \
        ("teams_mgmt_eu", "Fabrikam", 1, [], None)
    assert sql("SELECT count(*) FROM teams_direct_routing_sessions WHERE tenant_id = %s", (untouched,)) == [(0,)]


def test_rerun_is_idempotent_renewal_is_periodic_and_only_changes_are_sent(teams, panel_db, sql, monkeypatch):
    env = teams(tenants=2)
    t0, t1 = _two_tenants(env, sql, monkeypatch)
    _renew(panel_db)
    first_tokens = env.issuer.tokens()
    gateways_before = _gateways(sql, t0)
    sent = len(env.ps.sent)

    # the same interval again: nothing due, nothing sent, no token requested
    out = _renew(panel_db)
    assert (out["due"], len(env.ps.sent), env.issuer.tokens()) == (0, sent, first_tokens), out

    # an hour later the sessions are renewed with new tokens; Teams is as wanted: read only
    out = _renew(panel_db, T0 + timedelta(minutes=60))
    assert (out["due"], out["renewed"], out["unchanged_tenants"], out["changed_tenants"]) == (2, 2, 2, 0), out
    assert [c[0] for c in _calls(env.ps, sent)] == ["teams/connect", "teams/get_direct_routing", "teams/disconnect"] * 2
    new_tokens = env.issuer.tokens()[len(first_tokens):]
    assert len(new_tokens) == 4 and not set(new_tokens) & set(first_tokens)
    assert env.ps.sent[sent].parameters["TeamsToken"] == env.issuer.token(t0, TEAMS_SCOPE)
    later = T0 + timedelta(minutes=60)
    assert _gateways(sql, t0) == [g[:5] + (later, g[6]) for g in gateways_before]      # changed_at kept
    s0 = _session(sql, t0)
    assert (s0["renewed_at"], s0["renewals"], s0["changes"]) == (later, 2, [])

    # the panel changes one limit: only that tenant is due, and only that setting is sent
    sql("UPDATE teams_sbcs SET max_concurrent_sessions = 45 WHERE fqdn = 'sbc1.voice.example'")
    sent = len(env.ps.sent)
    out = _renew(panel_db, T0 + timedelta(minutes=65))
    assert (out["due"], out["gateways_updated"]) == (1, 1), out
    assert _calls(env.ps, sent)[2] == ("teams/set_pstn_gateway",
                                      {"Identity": "sbc1.voice.example", "MaxConcurrentSessions": 45})
    assert [c[0] for c in _calls(env.ps, sent)].count("teams/set_pstn_gateway") == 1

    # someone disables an SBC and narrows the route in the Teams admin center: repaired at the next renewal
    env.fake.tenants[t0]["gateways"]["sbc2.voice.example"]["Enabled"] = False
    env.fake.tenants[t0]["routes"]["PF-Route"]["OnlinePstnGatewayList"] = ["sbc1.voice.example"]
    sent = len(env.ps.sent)
    out = _renew(panel_db, T0 + timedelta(minutes=125))
    assert (out["due"], out["gateways_updated"], out["routes_updated"]) == (2, 1, 1), out
    changes = [c for c in _calls(env.ps, sent) if c[0].startswith(("teams/set", "teams/new", "teams/add"))]
    assert changes == [
        ("teams/set_pstn_gateway", {"Identity": "sbc2.voice.example", "Enabled": True}),
        ("teams/set_voice_route", {"Identity": "PF-Route",
                                   "OnlinePstnGatewayList": ["sbc1.voice.example", "sbc2.voice.example"]}),
    ]
    assert _session(sql, t0)["renewals"] == 4


def _refuse_connect_echoing_the_token(ps, tenant):
    """Teams refuses ``tenant``'s connect with an error record that repeats the token it was given."""
    ps.answer("teams/connect", error="refused")
    refusal = ps.answers["teams/connect"][0]

    def when(sent):
        if sent.parameters["TenantId"] != tenant:
            return False
        refusal.error = (f"Connect-MicrosoftTeams: token {sent.parameters['TeamsToken']} is not valid for the"
                         " tenant admin API")
        return True

    refusal.when = when


def test_refused_credentials_and_a_refused_connect_skip_their_tenant_and_no_token_leaks(
        teams, panel_db, sql, caplog, capsys):
    from panelflow.hooks.powershell import PowerShellHook

    env = teams(tenants=3)
    t0, t1, t2 = sorted(env.ids)
    for t in (t0, t1, t2):
        _configure(sql, t, [(f"sbc.{t[:8]}.example", 5061, 10, True)])
        env.fake.tenant(t, gateways=[gateway(f"sbc.{t[:8]}.example", 5061, 10)], usages=["PF-Voice"],
                        routes=[route("PF-Route", [f"sbc.{t[:8]}.example"], ["PF-Voice"])])
    env.api.issuer.fail_tenant(t0)
    _refuse_connect_echoing_the_token(env.ps, t1)
    caplog.set_level(logging.DEBUG)
    log = logging.getLogger("test.teams_direct_routing")

    out = _renew(panel_db, log=log)

    assert (out["due"], out["renewed"], out["failed"], out["failed_tenants"]) == (3, 1, 2, [t0, t1]), out
    s0, s1, s2 = (_session(sql, t) for t in (t0, t1, t2))
    assert s0["renewed_at"] is None and "AADSTS7000215" in s0["error"] and s0["error_at"] == T0
    assert s1["renewed_at"] is None and s1["error"].startswith("teams/connect: Connect-MicrosoftTeams: token [token]")
    assert (s2["renewed_at"], s2["error"], s2["changes"]) == (T0, None, [])
    assert [c.parameters.get("TenantId") for c in env.ps.calls("teams/connect")] == [t1, t2]   # none for t0

    # the tokens went to the host as parameters, and nowhere else
    tokens = env.issuer.tokens()
    assert len(tokens) == 4 and all(any(_on_the_wire(t) in c.clixml for c in env.ps.sent) for t in tokens)
    dump = "".join(r[0] for table in OWN_TABLES for r in sql(f"SELECT coalesce(json_agg(x)::text, '') FROM {table} x"))
    printed = capsys.readouterr()
    for where, text in (("log", caplog.text), ("stdout", printed.out), ("stderr", printed.err),
                        ("summary", json.dumps(out, default=str)), ("db", dump)):
        for t in tokens:
            i = text.find(t)
            assert i < 0, f"token in {where}: {text[max(0, i - 300):i + 50]}"
    assert "[token]" in dump and "Packing PSRP message" not in caplog.text

    # (the check above can see a leak: outside the step, pypsrp prints the parameters at DEBUG)
    env.ps.answer("diagnostics/echo_parameters", [{"Identity": "x", "Limit": 1}])
    PowerShellHook("teams_powershell").run_script("diagnostics/echo_parameters", {"Identity": "visible-marker-42"})
    assert "visible-marker-42" in caplog.text


def test_the_step_fails_only_when_every_due_tenant_failed(teams, panel_db, sql, monkeypatch):
    env = teams(tenants=3)
    refused, misdirected, other = env.ids
    for t in (refused, misdirected):
        _configure(sql, t, [("sbc.voice.example", 5061, None, True)])
    env.api.issuer.fail_tenant(refused)
    # the second tenant's connection is the third tenant's app: its tokens would reach the wrong Teams
    monkeypatch.setenv("AIRFLOW_CONN_M365_TENANT_1", json.dumps(env.api.connection(2, env.url, timeout=10)))

    with pytest.raises(RuntimeError, match=r"no tenant's Teams direct routing could be renewed \(2 failed, 0 deferred\)"):
        _renew(panel_db)
    assert env.ps.sent == []
    assert "AADSTS7000215" in _session(sql, refused)["error"]
    assert _session(sql, misdirected)["error"] == \
        f"tokens: connection m365_tenant_1 is for tenant {other}, not {misdirected}"
    assert _session(sql, other) is None


def test_unreachable_teams_host_defers_every_tenant_without_asking_for_their_tokens(teams, panel_db, sql):
    env = teams(tenants=3)
    t0, t1, t2 = sorted(env.ids)
    for t in (t0, t1, t2):
        _configure(sql, t, [("sbc.voice.example", 5061, None, True)])
    env.ps.answer("teams/connect", timeout=True)

    with pytest.raises(RuntimeError, match=r"\(0 failed, 3 deferred\)"):
        _renew(panel_db)
    assert [c.script for c in env.ps.sent] == ["teams/connect"]
    assert {te for te, _, _ in env.issuer.issued} == {t0}
    for t in (t0, t1, t2):
        s = _session(sql, t)
        assert s["renewed_at"] is None and s["error_at"] == T0
        assert s["error"].startswith("deferred: Teams management host teams_powershell unusable:")
        assert "Read timed out" in s["error"]
    # the host is back: all three are due again at the next run
    env.ps.answers["teams/connect"].pop(0)
    for t in (t0, t1, t2):
        env.fake.tenant(t, gateways=[gateway("sbc.voice.example")], usages=["PF-Voice"],
                        routes=[route("PF-Route", ["sbc.voice.example"], ["PF-Voice"])])
    out = _renew(panel_db, T0 + timedelta(minutes=5))
    assert (out["due"], out["renewed"], out["unchanged_tenants"]) == (3, 3, 3), out
    assert all(_session(sql, t)["error"] is None for t in (t0, t1, t2))


def test_changes_teams_refuses_and_malformed_records_are_reported_and_the_rest_converged(teams, panel_db, sql):
    env = teams(tenants=1)
    (t0,) = env.ids
    _configure(sql, t0, [("sbc-a.unverified.example", 5061, None, True), ("sbc-b.voice.example", 5061, None, True)])
    env.fake.tenant(t0, gateways=[gateway("sbc-b.voice.example"),
                                  gateway("broken.voice.example", port="five thousand")], usages=[])
    env.ps.answer("teams/new_pstn_gateway", when=lambda sent: sent.parameters["Fqdn"] == "sbc-a.unverified.example",
                  error='Can not use the "unverified.example" domain as it was not configured for this tenant.')

    out = _renew(panel_db)

    assert (out["renewed"], out["failed"], out["partly_failed_tenants"], out["routes_created"]) == (1, 0, 1, 1), out
    assert any("gateway broken.voice.example: SipSignalingPort" in e for e in out["skipped_examples"]), out
    assert any("was not configured for this tenant" in e for e in out["skipped_examples"]), out
    new_route = env.ps.calls("teams/new_voice_route")[0].parameters
    assert new_route["OnlinePstnGatewayList"] == ["sbc-b.voice.example"]        # only SBCs Teams has
    assert [r[0] for r in _gateways(sql, t0)] == ["sbc-b.voice.example"]     # the malformed one is not recorded
    s = _session(sql, t0)
    assert s["applied"] is None and "not configured for this tenant" in s["error"] and s["renewed_at"] == T0
    # the tenant stays due (its last session left something undone): tried again next run
    sent = len(env.ps.sent)
    out = _renew(panel_db, T0 + timedelta(minutes=5))
    assert out["due"] == 1 and [c[0] for c in _calls(env.ps, sent)][:3] == [
        "teams/connect", "teams/get_direct_routing", "teams/new_pstn_gateway"]


def test_a_missing_teams_management_connection_defers_the_tenants_on_it(teams, panel_db, sql, monkeypatch):
    env = teams(tenants=2)
    first, second = sorted(env.ids)
    for t in (first, second):
        _configure(sql, t, [("sbc.voice.example", 5061, None, True)])
    monkeypatch.delenv("AIRFLOW_CONN_TEAMS_POWERSHELL")

    with pytest.raises(RuntimeError, match=r"\(0 failed, 2 deferred\)"):
        _renew(panel_db)
    assert env.ps.sent == [] and {te for te, _, _ in env.issuer.issued} == {first}
    error = _session(sql, second)["error"]
    assert error.startswith("deferred: Teams management host teams_powershell unusable: teams_powershell: "
                            "connection not usable: AirflowNotFoundException"), error


def test_nothing_configured_is_a_quiet_success(teams, panel_db, monkeypatch):
    env = teams(tenants=2)                            # tenants, but none with direct routing
    monkeypatch.delenv("AIRFLOW_CONN_TEAMS_POWERSHELL")  # and no Teams host: never looked up
    out = _renew(panel_db)
    assert (out["due"], out["renewed"], out["failed"], out["deferred"]) == (0, 0, 0, 0), out
    assert env.ps.sent == [] and env.issuer.issued == []


def _on_the_wire(text: str) -> str:
    """``text`` as a CLIXML string carries it (``_x`` is escaped as ``_x005F_x``, case-insensitively)."""
    import xml.etree.ElementTree as ET

    from pypsrp.serializer import Serializer

    return ET.tostring(Serializer().serialize(text), encoding="unicode").removeprefix("<S>").removesuffix("</S>")
