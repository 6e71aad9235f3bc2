"""Office365Work (panelflow.steps.microsoft365.jobs, .sessions): the o365 group-action queue as real Graph / Partner Center
calls against the loopback Microsoft sandbox, idle-session closing and token renewal, into the real
panel DB."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from psycopg.types.json import Jsonb

from panelflow.step import Interval

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=timezone.utc)
OWN_TABLES = ("m365_tenants", "m365_tenant_tokens", "group_action_jobs", "csp_profiles", "csp_customers",
              "o365_subscriptions")
ENTERPRISEPACK = "6fd2c87f-b296-42f0-b197-1e91e994b900"
PC_CLIENT, PC_SECRET = "panelflow-tests", "pc-secret-for-tests"


def _modules():
    from sandbox import microsoft as ms

    return ms, ms.load("microsoft_graph"), ms.load("partner_center")


@pytest.fixture
def o365(panel_db, sql, monkeypatch):
    """``o365(tenants=…, **conn_extra)`` → the GraphApi (and ``.pc``, a PartnerCenterApi with partner
    ``partner-a`` wired as connection ``pc_a``) of one started sandbox; tenants as connections
    ``m365_tenant_<i>`` and ``m365_tenants`` rows; ``.customer`` a panel customer."""
    ms, mg, pcm = _modules()
    sql("TRUNCATE " + ", ".join(OWN_TABLES) + " RESTART IDENTITY CASCADE")
    started = []

    def start(tenants=2, users=20, groups=4, **extra):
        issuer = ms.TokenIssuer()
        api = mg.GraphApi(issuer, tenants=tenants, users_per_tenant=users, groups_per_tenant=groups,
                          contacts_per_tenant=1, members_per_group=3)
        pc = pcm.PartnerCenterApi(issuer, page_size=5)
        issuer.register("partner-a", PC_CLIENT, PC_SECRET)
        pc.add_partner("partner-a")
        sandbox = ms.MicrosoftSandbox([issuer, api, pc]).start()
        started.append(sandbox)
        api.issuer, api.url, api.pc = issuer, sandbox.url, pc
        monkeypatch.setenv("AIRFLOW_CONN_PC_A", json.dumps({
            "conn_type": "panelflow_partner_center", "host": "127.0.0.1", "port": sandbox.port, "schema": "http",
            "login": PC_CLIENT, "password": PC_SECRET,
            "extra": {"tenant_id": "partner-a", "authority": sandbox.url, "timeout": 5, "retries": 3,
                      "backoff": 0.01, "max_retry_wait": 0.2}}))
        sql("INSERT INTO currencies (code, name) VALUES ('GBP', 'Pound sterling') ON CONFLICT DO NOTHING")
        (provider,) = sql("INSERT INTO providers (name, billing_email, currency)"
                          " VALUES ('Sandbox hosting', 'billing@host.example', 'GBP') RETURNING id")[0]
        (api.customer,) = sql("INSERT INTO customers (provider_id, name, email, country, currency)"
                              " VALUES (%s, 'Contoso Ltd', 'it@contoso.example', 'GB', 'GBP') RETURNING id",
                              (provider,))[0]
        for i in range(tenants):
            conn = api.connection(i, sandbox.url, backoff=0.01, backoff_max=0.05, timeout=10, **extra)
            monkeypatch.setenv(f"AIRFLOW_CONN_M365_TENANT_{i}", json.dumps(conn))
            sql("INSERT INTO m365_tenants (tenant_id, conn_id) VALUES (%s, %s)", (api.tenant_id(i), f"m365_tenant_{i}"))
        return api

    yield start
    for sandbox in started:
        sandbox.stop()


def _at(end=T0):
    return Interval(end - timedelta(minutes=5), end)


def _job(sql, action, payload, priority=5):
    return sql("INSERT INTO group_action_jobs (backend, action, payload, priority) VALUES ('o365', %s, %s, %s)"
               " RETURNING id", (action, Jsonb(payload), priority))[0][0]


def _process(panel_db, at=T0, **params):
    from panelflow.steps.microsoft365.jobs import process_o365_group_actions

    return process_o365_group_actions(panel_db, _at(at), params, None)


def _state(sql, job):
    return sql("SELECT status, attempts, result, error, payload FROM group_action_jobs WHERE id = %s", (job,))[0]


def _users_named(api, i, upn):
    return [u for u in api._tenant(i).users.items.values() if u["userPrincipalName"] == upn]


def test_group_actions_run_as_graph_calls_and_record_each_result(o365, panel_db, sql):
    api = o365(tenants=2)
    t0 = api.tenant_id(0)
    users, groups = api.user_ids(0), api.group_ids(0)
    member = next(iter(api.members(0, groups[0])))
    outsider = next(u for u in users if u not in api.members(0, groups[1]))
    jobs = {
        "create": _job(sql, "create_user", {"tenant_id": t0, "user_principal_name": "jo@tenant0.example",
                                            "display_name": "Jo Bloggs", "password": "Str0ng-Pass!",
                                            "usage_location": "GB"}, priority=1),
        "licence": _job(sql, "assign_licence", {"tenant_id": t0, "user": "jo@tenant0.example",
                                                "add": [ENTERPRISEPACK]}, priority=2),
        "reset": _job(sql, "reset_password", {"tenant_id": t0, "user": users[1], "password": "N3w-Passw0rd",
                                              "force_change": False}),
        "add_member": _job(sql, "add_group_member", {"tenant_id": t0, "group_id": groups[1],
                                                     "member": api.user(0, outsider)["userPrincipalName"]}),
        "remove_member": _job(sql, "remove_group_member", {"tenant_id": t0, "group_id": groups[0], "member": member}),
        "delete": _job(sql, "delete_user", {"tenant_id": t0, "user": users[2]}),
        "unknown_tenant": _job(sql, "delete_user", {"tenant_id": "00000000-0000-0000-0000-000000000001",
                                                    "user": users[3]}),
        "bad_sku": _job(sql, "assign_licence", {"tenant_id": t0, "user": users[3],
                                                "add": ["00000000-0000-0000-0000-0000000000aa"]}),
        "unknown_action": _job(sql, "make_coffee", {"tenant_id": t0}),
        "other_backend": sql("INSERT INTO group_action_jobs (backend, action) VALUES ('exchange', 'x') RETURNING id")[0][0],
    }

    out = _process(panel_db)
    assert out["claimed"] == 9 and out["succeeded"] == 6 and out["failed"] == 3, out

    status, attempts, result, error, payload = _state(sql, jobs["create"])
    assert (status, attempts, error) == ("succeeded", 1, None)
    (created,) = _users_named(api, 0, "jo@tenant0.example")
    assert result == {"user_id": created["id"], "user_principal_name": "jo@tenant0.example", "created": True}
    assert "password" not in payload and payload["display_name"] == "Jo Bloggs"     # the secret is not kept
    assert api.password_of(0, created["id"])["password"] == "Str0ng-Pass!"
    assert created["assignedLicenses"] == [{"skuId": ENTERPRISEPACK, "disabledPlans": []}]
    assert _state(sql, jobs["licence"])[2]["licences"] == [ENTERPRISEPACK]
    assert api.password_of(0, users[1]) == {"password": "N3w-Passw0rd", "forceChangePasswordNextSignIn": False}
    assert outsider in api.members(0, groups[1]) and member not in api.members(0, groups[0])
    assert users[2] not in api.user_ids(0)
    assert _state(sql, jobs["delete"])[2] == {"user": users[2], "deleted": True}

    for key, words in (("unknown_tenant", "is not linked"), ("bad_sku", "does not correspond to a valid"),
                       ("unknown_action", "unknown o365 action")):
        status, attempts, result, error, _ = _state(sql, jobs[key])
        assert status == "failed" and attempts == 1 and result is None and words in error, (key, error)
    assert _state(sql, jobs["other_backend"])[0] == "pending"            # not this queue's
    assert sql("SELECT last_used_at FROM m365_tenant_tokens WHERE tenant_id = %s", (t0,)) == [(T0,)]

    # a rerun finds nothing more to do; doing the same actions again changes nothing
    assert _process(panel_db, T0 + timedelta(minutes=5))["claimed"] == 0
    again = [_job(sql, "delete_user", {"tenant_id": t0, "user": users[2]}),
             _job(sql, "add_group_member", {"tenant_id": t0, "group_id": groups[1], "member": outsider}),
             _job(sql, "remove_group_member", {"tenant_id": t0, "group_id": groups[0], "member": member}),
             _job(sql, "create_user", {"tenant_id": t0, "user_principal_name": "jo@tenant0.example",
                                       "display_name": "Jo Bloggs", "password": "Str0ng-Pass!"})]
    out = _process(panel_db, T0 + timedelta(minutes=10))
    assert out["succeeded"] == 4, out
    assert _state(sql, again[0])[2]["already_absent"] is True
    assert _state(sql, again[1])[2]["already_member"] is True
    assert _state(sql, again[2])[2]["already_absent"] is True
    assert _state(sql, again[3])[2]["created"] is False and len(_users_named(api, 0, "jo@tenant0.example")) == 1


def test_create_user_exactly_once_after_a_lost_answer_and_a_killed_worker(o365, panel_db, sql):
    api = o365(tenants=1)
    t0 = api.tenant_id(0)
    upn = "new.starter@tenant0.example"
    payload = {"tenant_id": t0, "user_principal_name": upn, "display_name": "New Starter", "password": "Str0ng-Pass!"}

    # Graph creates the user but the answer is lost (504): the hook resends the POST, Graph says the UPN
    # exists, and the step reads the user by its UPN instead of failing or creating another
    api.lose_next_answer("POST", "/users")
    job = _job(sql, "create_user", payload)
    assert _process(panel_db)["succeeded"] == 1
    (user,) = _users_named(api, 0, upn)
    assert _state(sql, job)[2] == {"user_id": user["id"], "user_principal_name": upn, "created": False}
    assert [w[1:] for w in api.writes] == [("POST", "/users", 504), ("POST", "/users", 400)]

    # a worker killed after its call, before recording: the job stays 'running' and is taken again once
    # stale — the user is found by its UPN and not created a second time
    job2 = _job(sql, "create_user", {**payload, "user_principal_name": "second@tenant0.example"})
    sql("UPDATE group_action_jobs SET status = 'running', attempts = 1, started_at = %s WHERE id = %s",
        (T0 - timedelta(minutes=1), job2))
    api.add_user(0, userPrincipalName="second@tenant0.example", displayName="Second")   # the lost call's effect
    writes = len(api.writes)
    assert _process(panel_db, T0 + timedelta(minutes=5))["claimed"] == 0          # still running: not stale yet
    out = _process(panel_db, T0 + timedelta(minutes=31))
    assert out["reclaimed"] == 1 and out["succeeded"] == 1, out
    status, attempts, result, _, _ = _state(sql, job2)
    assert (status, attempts, result["created"]) == ("succeeded", 2, False)
    assert len(api.writes) == writes and len(_users_named(api, 0, "second@tenant0.example")) == 1


def test_unavailable_graph_keeps_the_job_for_the_next_run_until_attempts_run_out(o365, panel_db, sql):
    api = o365(tenants=1, max_retries=1)
    t0 = api.tenant_id(0)
    job = _job(sql, "reset_password", {"tenant_id": t0, "user": api.user_ids(0)[0], "password": "N3w-Passw0rd"})

    api.throttle(2, status=503, retry_after=None)
    out = _process(panel_db)
    assert out["retry_later"] == 1 and out["failed"] == 0, out
    status, attempts, _, error, payload = _state(sql, job)
    assert status == "pending" and attempts == 1 and "503" in error
    assert payload["password"] == "N3w-Passw0rd"              # kept while the job may still run

    api.throttle(2, status=503, retry_after=None)
    assert _process(panel_db, T0 + timedelta(minutes=5), o365_job_max_attempts=2)["failed"] == 1
    status, attempts, _, error, payload = _state(sql, job)
    assert status == "failed" and attempts == 2 and error.startswith("attempt 2 of 2:") and "password" not in payload

    api.issuer.fail_tenant(t0)                 # refused credentials: also kept for a later run
    api.issuer.expire_all()
    job2 = _job(sql, "delete_user", {"tenant_id": t0, "user": api.user_ids(0)[1]})
    assert _process(panel_db, T0 + timedelta(minutes=10))["retry_later"] == 1
    assert "credentials refused" in _state(sql, job2)[3]


def test_csp_trial_suspension_job_suspends_the_partner_center_subscription(o365, panel_db, sql):
    api = o365(tenants=1)
    pc = api.pc
    customer_tenant = pc.add_customer("partner-a", "Contoso Ltd")
    sub = pc.add_subscription("partner-a", customer_tenant, "OFFER-TRIAL", 5)
    (profile,) = sql("INSERT INTO csp_profiles (name, conn_id) VALUES ('CSP A', 'pc_a') RETURNING id")[0]
    (csp_customer,) = sql("INSERT INTO csp_customers (profile_id, tenant_id, customer_id, first_seen_at)"
                          " VALUES (%s, %s, %s, %s) RETURNING id", (profile, customer_tenant, api.customer, T0))[0]
    (panel_sub,) = sql("INSERT INTO subscriptions (customer_id, plan, price, currency, quantity, billing_cycle,"
                       " next_bill_date, started_on, status, o365_offer_id) VALUES (%s, 'M365 trial', 0, 'GBP', 5,"
                       " 'monthly', '2026-04-01', '2026-03-01', 'suspended', 'OFFER-TRIAL') RETURNING id",
                       (api.customer,))[0]
    sql("INSERT INTO o365_subscriptions (csp_customer_id, subscription_id, panel_subscription_id, offer_id, quantity,"
        " status, first_seen_at, changed_at) VALUES (%s, %s, %s, 'OFFER-TRIAL', 5, 'active', %s, %s)",
        (csp_customer, sub["id"].lower(), panel_sub, T0, T0))
    # the row ProvisioningWork's suspend_expired_csp_trials queues
    job = _job(sql, "suspend_subscription", {"subscription_id": panel_sub, "offer_id": "OFFER-TRIAL",
                                             "reason": "csp_trial_expired"})
    unlinked = _job(sql, "suspend_subscription", {"subscription_id": panel_sub + 1000})

    out = _process(panel_db)
    assert out["succeeded"] == 1 and out["failed"] == 1, out
    assert pc.partners["partner-a"].subscriptions[customer_tenant][sub["id"]]["status"] == "suspended"
    status, _, result, _, _ = _state(sql, job)
    assert status == "succeeded" and result == {"partner_subscription_id": sub["id"].lower(),
                                                "customer_tenant_id": customer_tenant, "status": "suspended"}
    assert "no Partner Center subscription is linked" in _state(sql, unlinked)[3]

    resume = _job(sql, "resume_subscription", {"partner_subscription_id": sub["id"]})
    assert _process(panel_db, T0 + timedelta(minutes=5))["succeeded"] == 1
    assert pc.partners["partner-a"].subscriptions[customer_tenant][sub["id"]]["status"] == "active"
    assert _state(sql, resume)[0] == "succeeded"


def _renew(panel_db, at=T0, **params):
    from panelflow.steps.microsoft365.sessions import renew_tenant_access_tokens

    return renew_tenant_access_tokens(panel_db, _at(at), params, None)


def _clear(panel_db, at=T0, **params):
    from panelflow.steps.microsoft365.sessions import clear_powershell_runspaces

    return clear_powershell_runspaces(panel_db, _at(at), params)


def test_token_renewal_per_tenant_a_failing_one_recorded_and_idle_sessions_closed(o365, panel_db, sql):
    from panelflow.hooks import microsoft_graph as g

    api = o365(tenants=3)
    t0, t1, t2 = (api.tenant_id(i) for i in range(3))
    api.issuer.fail_tenant(t2)

    out = _renew(panel_db)
    assert (out["due"], out["renewed"], out["failed"], out["failed_tenants"]) == (3, 2, 1, [t2]), out
    rows = {str(t): r for t, *r in sql("SELECT tenant_id, renewed_at, expires_at, renewals, last_error"
                                       " FROM m365_tenant_tokens")}
    renewed_at, expires_at, renewals, error = rows[t0]
    assert (renewed_at, renewals, error) == (T0, 1, None)
    assert abs(expires_at - (T0 + timedelta(hours=1))) < timedelta(seconds=5)     # the token's lifetime
    assert rows[t2][0] is None and "AADSTS7000215" in rows[t2][3]
    issued = api.issuer.issued
    assert issued == 2

    # not due again until 15 minutes before expiry; the failing tenant is tried every run
    assert _renew(panel_db, T0 + timedelta(minutes=5))["due"] == 1
    assert _renew(panel_db, T0 + timedelta(minutes=46))["renewed"] == 2
    assert api.issuer.issued == issued + 2

    # the token cache of this process holds the tenants' tokens; idle ones are closed and dropped
    api.issuer.failing.clear()
    _job(sql, "delete_user", {"tenant_id": t0, "user": api.user_ids(0)[0]})
    assert _process(panel_db, T0 + timedelta(minutes=100))["succeeded"] == 1     # t0 used at +100
    cached_before = len(g._TOKENS)
    out = _clear(panel_db, T0 + timedelta(minutes=110), o365_session_idle_minutes=60)
    assert out["sessions_closed"] == 2 and out["closed_tenants"] == sorted([t1, t2]), out
    assert out["cached_tokens_dropped"] >= 1 and len(g._TOKENS) == cached_before - out["cached_tokens_dropped"]
    assert sql("SELECT tenant_id::text FROM m365_tenant_tokens WHERE closed_at IS NOT NULL ORDER BY 1") == \
        [(t,) for t in sorted([t1, t2])]

    # closed sessions are not renewed; the open one is, before its token expires
    out = _renew(panel_db, T0 + timedelta(minutes=140))
    assert out["due"] == 1 and out["renewed"] == 1, out
    # using a closed tenant reopens its session
    _job(sql, "delete_user", {"tenant_id": t1, "user": api.user_ids(1)[0]})
    _process(panel_db, T0 + timedelta(minutes=150))
    assert sql("SELECT closed_at FROM m365_tenant_tokens WHERE tenant_id = %s", (t1,)) == [(None,)]
    # a disabled tenant's session is closed at once
    sql("UPDATE m365_tenants SET enabled = false WHERE tenant_id = %s", (t0,))
    assert _clear(panel_db, T0 + timedelta(minutes=151))["closed_tenants"] == [t0]


def test_renewal_fails_the_step_when_no_tenant_can_be_renewed(o365, panel_db, sql):
    api = o365(tenants=2)
    for i in range(2):
        api.issuer.fail_tenant(api.tenant_id(i))
    with pytest.raises(RuntimeError, match="no tenant token could be renewed"):
        _renew(panel_db)
    assert sql("SELECT count(*) FROM m365_tenant_tokens WHERE last_error IS NOT NULL")[0][0] == 2
