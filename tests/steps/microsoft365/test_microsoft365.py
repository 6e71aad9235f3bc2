"""Microsoft 365 from Graph: the loopback Graph sandbox (include/sandbox/microsoft_graph.py) over
real HTTP, the hook on the azure provider's KiotaRequestAdapterHook, the steps into the real
panel DB."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime, timedelta, timezone

import pytest

from panelflow.step import Interval

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=timezone.utc)
M365_TABLES = ("m365_tenants", "m365_domains", "m365_subscribed_skus", "m365_policies", "m365_users",
               "m365_groups", "m365_group_members", "m365_contacts", "m365_sync_state",
               "o365_admin_audit_logs", "email_outbox")


def _sandbox_modules():
    from sandbox import microsoft as ms

    return ms, ms.load("microsoft_graph")


@pytest.fixture
def graph(panel_db, sql, monkeypatch):
    """``graph(tenants=…, users=…, …)`` → the GraphApi of a started sandbox, its tenants wired as
    connections ``m365_tenant_<i>`` and ``m365_tenants`` rows (tenant 0 linked to a customer)."""
    ms, mg = _sandbox_modules()
    sql("TRUNCATE " + ", ".join(M365_TABLES) + " CASCADE")
    started = []

    def start(tenants=2, users=40, groups=8, contacts=4, members=3, page_size=100, **extra):
        issuer = ms.TokenIssuer()
        api = mg.GraphApi(issuer, tenants=tenants, users_per_tenant=users, groups_per_tenant=groups,
                          contacts_per_tenant=contacts, members_per_group=members, page_size=page_size)
        sandbox = ms.MicrosoftSandbox([issuer, api]).start()
        started.append(sandbox)
        api.issuer, api.url = issuer, sandbox.url
        sql("INSERT INTO currencies (code, name) VALUES ('GBP', 'Pound sterling') ON CONFLICT DO NOTHING")
        (provider,) = sql("INSERT INTO providers (name, billing_email, currency)"
                          " VALUES ('Sandbox hosting', 'billing@host.example', 'GBP') RETURNING id")[0]
        (customer,) = sql("INSERT INTO customers (provider_id, name, email, country, currency)"
                          " VALUES (%s, 'Contoso Ltd', 'it@contoso.example', 'GB', 'GBP') RETURNING id", (provider,))[0]
        for i in range(tenants):
            conn = api.connection(i, sandbox.url, backoff=0.01, backoff_max=0.05, timeout=10, **extra)
            monkeypatch.setenv(f"AIRFLOW_CONN_M365_TENANT_{i}", json.dumps(conn))
            sql("INSERT INTO m365_tenants (tenant_id, conn_id, customer_id) VALUES (%s, %s, %s)",
                (api.tenant_id(i), f"m365_tenant_{i}", customer if i == 0 else None))
        return api

    yield start
    for sandbox in started:
        sandbox.stop()


def _sync(panel_db, at=T0, **params):
    from panelflow.steps.microsoft365.tenant_sync import sync_tenant_entities

    return sync_tenant_entities(panel_db, Interval(at - timedelta(hours=4), at), params, None)


def _count(sql, table, tenant, where="true"):
    return sql(f"SELECT count(*) FROM {table} WHERE tenant_id = %s AND {where}", (tenant,))[0][0]


def _expected(api, i):
    t = api._tenant(i)
    users = t.users.items.values()
    return {
        "users": len(t.users.items),
        "licences": sum(len(u["assignedLicenses"]) for u in users),
        "groups": len(t.groups.items),
        "members": sum(len(m) for g, m in t.groups.members.items() if g in t.groups.items),
        "contacts": len(t.contacts),
    }


def _stored(sql, tenant):
    return {"users": _count(sql, "m365_users", tenant), "licences": _count(sql, "m365_user_licenses", tenant),
            "groups": _count(sql, "m365_groups", tenant), "members": _count(sql, "m365_group_members", tenant),
            "contacts": _count(sql, "m365_contacts", tenant)}


def test_full_then_delta_sync_writes_only_changes(graph, panel_db, sql):
    api = graph(tenants=2, users=120, groups=25, page_size=20)
    t0, t1 = api.tenant_id(0), api.tenant_id(1)

    first = _sync(panel_db)
    assert first["tenants_synced"] == 2 and first["tenants_failed"] == 0, first
    assert first["first_syncs"] == 2
    for i, t in ((0, t0), (1, t1)):
        assert _stored(sql, t) == _expected(api, i)
    assert first["users_pages"] == 2 * 6 and first["groups_pages"] == 2 * 2   # many pages, every one written
    assert first["users_full_rounds"] == 2 and first["users_written"] == 240

    # the tenant, its domains, SKUs (with consumed units), policies and mailboxes
    name, domain, country = sql("SELECT display_name, default_domain, country_code FROM m365_tenants"
                                " WHERE tenant_id = %s", (t0,))[0]
    assert (name, domain, country) == ("Tenant 0 Ltd", "tenant0.example", "GB")
    assert sql("SELECT name, is_default, is_initial FROM m365_domains WHERE tenant_id = %s ORDER BY name", (t0,)) == [
        ("tenant0.example", True, False), ("tenant0.onmicrosoft.com", False, True)]
    skus = dict(sql("SELECT sku_part_number, consumed_units FROM m365_subscribed_skus WHERE tenant_id = %s", (t0,)))
    assert sum(skus.values()) == _expected(api, 0)["licences"] and set(skus) == {
        "ENTERPRISEPACK", "O365_BUSINESS_PREMIUM", "EXCHANGESTANDARD"}
    assert {p for (p,) in sql("SELECT policy FROM m365_policies WHERE tenant_id = %s", (t0,))} == {
        "authorizationPolicy", "identitySecurityDefaultsEnforcementPolicy"}
    with_mail = sum(1 for u in api._tenant(0).users.items.values() if u["mail"])
    assert _count(sql, "m365_mailboxes", t0, "kind = 'user'") == with_mail
    assert _count(sql, "m365_mailboxes", t0, "kind = 'group'") == sum(
        1 for g in api._tenant(0).groups.items.values() if "Unified" in g["groupTypes"])
    links = sql("SELECT entity, delta_link IS NOT NULL FROM m365_sync_state WHERE tenant_id = %s ORDER BY 1", (t0,))
    assert links == [("contacts", False), ("groups", True), ("users", True)]
    issued = api.issuer.issued

    # changes in tenant 0 only
    users = api.user_ids(0)
    changed, gone = users[3], users[4]
    before = dict(sql("SELECT id::text, xmin::text FROM m365_users WHERE tenant_id = %s", (t0,)))
    api.update_user(0, changed, displayName="Renamed User", jobTitle="CTO")
    api.update_user(0, users[5], assignedLicenses=[{"skuId": "4b9405b0-7788-4568-add1-99614e613b69", "disabledPlans": []}])
    api.remove_user(0, gone)
    new_user = api.add_user(0, displayName="New Starter", mail="new@tenant0.example",
                            userPrincipalName="new@tenant0.example")
    groups = api.group_ids(0)
    new_group = api.add_group(0, displayName="Project X", members={new_user: "user", changed: "user"})
    old_member = next(iter(api.members(0, groups[0])))
    api.remove_member(0, groups[0], old_member)
    api.remove_group(0, groups[1])
    api.served.clear()

    second = _sync(panel_db, at=T0 + timedelta(hours=4))
    assert second["tenants_synced"] == 2, second
    assert second["first_syncs"] == 0
    assert second["users_delta_rounds"] == 2 and "users_full_rounds" not in second
    assert second["users_written"] == 3 and second["users_removed"] == 1   # changed, re-licensed, new; removed
    # groups: only the new one is written — the others in the delta changed only their members
    assert second["groups_written"] == 1 and second["groups_removed"] == 1
    assert second["members_written"] == 2 and second["members_removed"] >= 1
    # one delta page per entity and tenant: only changes were read …
    assert api.served[(t0, "/users/delta")] == 1 and api.served[(t1, "/users/delta")] == 1
    # … and only changed rows written
    after = dict(sql("SELECT id::text, xmin::text FROM m365_users WHERE tenant_id = %s", (t0,)))
    rewritten = {u for u in after if u in before and after[u] != before[u]}
    assert rewritten == {changed, users[5]}
    assert set(after) - set(before) == {new_user} and gone not in after
    for i, t in ((0, t0), (1, t1)):
        assert _stored(sql, t) == _expected(api, i)
    # a partial object is merged: untouched properties are kept
    data, display, enabled = sql("SELECT data, display_name, account_enabled FROM m365_users"
                                 " WHERE tenant_id = %s AND id = %s", (t0, changed))[0]
    assert display == "Renamed User" and data["jobTitle"] == "CTO" and data["userPrincipalName"].startswith("user")
    assert sql("SELECT sku_id::text FROM m365_user_licenses WHERE tenant_id = %s AND user_id = %s", (t0, users[5])) == [
        ("4b9405b0-7788-4568-add1-99614e613b69",)]
    assert sorted(m for (m,) in sql("SELECT member_id::text FROM m365_group_members WHERE tenant_id = %s"
                                    " AND group_id = %s", (t0, new_group))) == sorted([new_user, changed])
    assert _count(sql, "m365_group_members", t0, f"group_id = '{groups[1]}'") == 0
    assert _count(sql, "m365_group_members", t0, f"member_id = '{gone}'") == 0
    assert api.issuer.issued == issued   # tokens cached across runs until they near expiry


def test_tenants_in_parallel_but_bounded(graph, panel_db, sql):
    api = graph(tenants=5, users=60, groups=6, page_size=5)
    api.latency = 0.01                   # a round trip, so that tenants do overlap
    summary = _sync(panel_db, tenant_concurrency=2)
    assert summary["tenants_synced"] == 5
    assert api.max_in_flight == 2        # one request at a time per tenant, two tenants at a time
    for i in range(5):
        assert _stored(sql, api.tenant_id(i)) == _expected(api, i)


def test_throttling_storm_and_token_expiring_mid_sync(graph, panel_db, sql):
    api = graph(tenants=1, users=90, groups=12, page_size=10)
    api.throttle(6, status=429, retry_after="0.05")     # the first request answered 429 six times
    # mid-users, a users page answered 503 without Retry-After four times: exponential backoff
    api.after_requests(12, lambda: api.throttle(4, status=503, retry_after=None))
    api.after_requests(20, api.issuer.expire_all)        # and then the token dies, still in the users

    summary = _sync(panel_db)
    assert summary["tenants_synced"] == 1, summary
    assert summary["graph_throttled"] == 10 and summary["graph_retried"] == 10
    assert summary["graph_token_refreshes"] == 1
    assert api.statuses[429] == 6 and api.statuses[503] == 4 and api.statuses[401] == 1
    assert api.issuer.issued == 2
    assert _stored(sql, api.tenant_id(0)) == _expected(api, 0)


def test_retry_after_is_honoured_and_retries_are_bounded(graph, panel_db, sql):
    from panelflow.hooks.microsoft_graph import GraphUnavailable, MicrosoftGraphHook

    api = graph(tenants=1, users=5, groups=1, max_retries=2)

    async def one(hook_id="m365_tenant_0"):
        async with MicrosoftGraphHook(hook_id) as hook:
            started = time.monotonic()
            page = await hook.get("domains")
            return page, time.monotonic() - started, hook.stats

    api.throttle(1, status=429, retry_after="1")
    page, elapsed, stats = asyncio.run(one())
    assert len(page.value) == 2 and elapsed >= 1.0 and stats.waited_seconds == 1.0

    api.throttle(3, status=503, retry_after=None)       # three answers, two retries allowed
    with pytest.raises(GraphUnavailable, match="503 after 3 tries"):
        asyncio.run(one())
    api.throttle(0)
    hook = MicrosoftGraphHook("m365_tenant_0")
    hook.policy.update(backoff=1.0, backoff_max=8.0, max_retry_after=30.0)
    assert [hook._delay(a, None) <= min(2 ** a, 8.0) for a in range(6)] == [True] * 6
    assert hook._delay(0, "120") == 30.0      # a Retry-After past the bound waits the bound


def test_failing_tenant_is_reported_and_the_others_synced(graph, panel_db, sql):
    api = graph(tenants=3, users=20, groups=3)
    bad = api.tenant_id(1)
    api.issuer.fail_tenant(bad)

    summary = _sync(panel_db)
    assert summary["tenants_synced"] == 2 and summary["tenants_failed"] == 1
    assert summary["skipped"] == {"credentials refused": 1}
    assert bad in summary["skipped_examples"][0] and "AADSTS7000215" in summary["skipped_examples"][0]
    error, first = sql("SELECT last_error, first_synced_at FROM m365_tenants WHERE tenant_id = %s", (bad,))[0]
    assert "credentials refused" in error and first is None
    for i in (0, 2):
        assert _stored(sql, api.tenant_id(i)) == _expected(api, i)
    assert _count(sql, "m365_users", bad) == 0

    for i in (0, 2):
        api.issuer.fail_tenant(api.tenant_id(i))
    api.issuer.expire_all()                              # cached tokens die too: every login now fails
    with pytest.raises(RuntimeError, match="none of the 3 tenant"):
        _sync(panel_db, at=T0 + timedelta(hours=4))


@pytest.mark.parametrize("kind", ["truncated", "bad_item", "wrong_type"])
def test_malformed_page_is_rejected_whole(graph, panel_db, sql, kind):
    api = graph(tenants=2, users=50, groups=2, page_size=10)
    t = api.tenant_id(0)
    if kind == "wrong_type":   # valid JSON, but a value PostgreSQL refuses: rejected by the database, whole
        api.update_user(0, api.user_ids(0)[25], accountEnabled="maybe")
    else:
        api.malform_next(kind, path="/users/delta", skip=2, tenant=0)

    summary = _sync(panel_db)
    assert summary["tenants_failed"] == 1 and summary["skipped"] == {"malformed page rejected": 1}, summary
    message = summary["skipped_examples"][0]
    assert "users/delta" in message
    assert {"truncated": "not JSON", "bad_item": "has no string 'id'",
            "wrong_type": "users page 3"}[kind] in message
    if kind == "wrong_type":
        assert "nothing of it written" in message and "boolean" in message
    assert _count(sql, "m365_users", t) == 20            # pages 1 and 2; nothing of page 3 on
    assert sql("SELECT delta_link FROM m365_sync_state WHERE tenant_id = %s AND entity = 'users'", (t,)) == []
    assert sql("SELECT first_synced_at FROM m365_tenants WHERE tenant_id = %s", (t,))[0][0] is None
    assert _stored(sql, api.tenant_id(1)) == _expected(api, 1)      # the other tenant is synced

    if kind == "wrong_type":
        api.update_user(0, api.user_ids(0)[25], accountEnabled=True)
    again = _sync(panel_db, at=T0 + timedelta(hours=4))   # the next run starts the round again and completes it
    assert again["tenants_synced"] == 2 and _stored(sql, t) == _expected(api, 0)


def test_expired_delta_link_means_a_full_round_that_sweeps(graph, panel_db, sql):
    api = graph(tenants=1, users=30, groups=4, page_size=10)
    t = api.tenant_id(0)
    _sync(panel_db)
    gone = api.user_ids(0)[0]
    api.remove_user(0, gone)
    api.invalidate_delta(0)            # Graph: 410 syncStateNotFound for the stored deltaLinks

    summary = _sync(panel_db, at=T0 + timedelta(hours=4))
    assert summary["users_delta_expired"] == 1 and summary["users_full_rounds"] == 1
    assert summary["users_swept"] == 1
    assert _stored(sql, t) == _expected(api, 0)


def test_a_connection_for_another_tenant_is_refused(graph, panel_db, sql, monkeypatch):
    api = graph(tenants=2, users=5, groups=1)
    monkeypatch.setenv("AIRFLOW_CONN_M365_TENANT_1", json.dumps(api.connection(0, api.url)))
    summary = _sync(panel_db)
    assert summary["skipped"] == {"connection is for another tenant": 1}
    assert _count(sql, "m365_users", api.tenant_id(1)) == 0


def test_tokens_are_cached_and_renewed_before_they_expire(graph):
    from panelflow.hooks.microsoft_graph import ClientCredentialsToken

    api = graph(tenants=1, users=1, groups=0)
    api.issuer.lifetime = 2                        # renewed half way: after a second
    tenant, client_id, secret = api.credentials(0)
    cred = ClientCredentialsToken(api.url, tenant, client_id, secret)

    async def tokens():
        first = await cred.get_token("https://graph.microsoft.com/.default")
        again = await cred.get_token("https://graph.microsoft.com/.default")
        await asyncio.sleep(1.1)
        renewed = await cred.get_token("https://graph.microsoft.com/.default")
        return first, again, renewed

    first, again, renewed = asyncio.run(tokens())
    assert again.token == first.token and renewed.token != first.token
    assert api.issuer.issued == 2 and cred.issued == 2


def test_plain_http_token_endpoint_only_on_loopback():
    from panelflow.hooks.microsoft_graph import ClientCredentialsToken

    with pytest.raises(ValueError, match="only a loopback sandbox"):
        ClientCredentialsToken("http://login.example.com", "t", "c", "s")
    ClientCredentialsToken("http://127.0.0.1:1", "t", "c", "s")


def test_admin_audit_logs_of_the_interval_without_duplicates(graph, panel_db, sql):
    from panelflow.steps.microsoft365.audit_logs import sync_o365_admin_audit_logs

    api = graph(tenants=2, users=5, groups=1)
    late = api.add_audit(0, T0 + timedelta(minutes=30, seconds=5), "Delete user", id="Directory_late_1")
    api.add_audit(0, T0 + timedelta(hours=1), "Outside", id="Directory_next_hour")   # the next interval's

    def run(start, end):
        return sync_o365_admin_audit_logs(panel_db, Interval(start, end), {}, None)

    every = api.audit_every
    def expected(start, end):
        n, k = 0, 0
        while True:
            when = datetime(2020, 1, 1, tzinfo=timezone.utc) + k * every
            if when >= end:
                return n
            n += start <= when
            k += 1

    first = run(T0, T0 + timedelta(hours=1))
    per_tenant = expected(T0, T0 + timedelta(hours=1))
    assert first["tenants_synced"] == 2 and first["audit_entries_written"] == 2 * per_tenant + 1
    again = run(T0, T0 + timedelta(hours=1))              # a rerun of the same interval adds nothing
    assert again["audit_entries_read"] == first["audit_entries_read"] and again["audit_entries_written"] == 0
    overlap = run(T0 + timedelta(minutes=30), T0 + timedelta(hours=1, minutes=30))
    assert overlap["audit_entries_written"] == 2 * (expected(T0, T0 + timedelta(hours=1, minutes=30)) - per_tenant) + 1
    rows = sql("SELECT graph_id, actor, action, target, details ->> 'category' FROM o365_admin_audit_logs"
               " WHERE tenant_id = %s AND graph_id = %s", (api.tenant_id(0), late))
    assert rows == [(late, "admin@tenant0.example", "Delete user", "user000000@tenant0.example", "UserManagement")]
    assert sql("SELECT count(*), count(DISTINCT (tenant_id, graph_id)) FROM o365_admin_audit_logs")[0] == (
        first["audit_entries_written"] + overlap["audit_entries_written"],) * 2
    assert sql("SELECT watermark FROM m365_sync_state WHERE tenant_id = %s AND entity = 'directoryAudits'",
               (api.tenant_id(0),)) == [(T0 + timedelta(hours=1, minutes=30),)]


def test_first_sync_notification_once_per_tenant(graph, panel_db, sql):
    from panelflow.steps.microsoft365.first_sync import send_first_sync_notifications

    api = graph(tenants=3, users=20, groups=4)
    api.issuer.fail_tenant(api.tenant_id(2))       # not synced yet: nothing to tell
    notice_at = T0 + timedelta(minutes=15)
    assert send_first_sync_notifications(panel_db, Interval(T0, notice_at), None)["tenants_due"] == 0
    _sync(panel_db)

    summary = send_first_sync_notifications(panel_db, Interval(T0, notice_at), None)
    assert summary["tenants_due"] == 2 and summary["notified"] == 1 and summary["emails_queued"] == 1
    assert summary["skipped"] == {"tenant is not linked to a customer": 1}
    ((to, subject, body, template, key),) = sql("SELECT to_address, subject, body_text, template, dedupe_key"
                                                " FROM email_outbox")
    assert to == "it@contoso.example" and template == "o365_first_sync"
    assert subject == "Your Microsoft 365 tenant Tenant 0 Ltd is now in your control panel"
    assert "users:      20" in body and "ENTERPRISEPACK" in body and key == f"o365-first-sync:{api.tenant_id(0)}"

    _sync(panel_db, at=T0 + timedelta(hours=4))        # later syncs are not first syncs
    again = send_first_sync_notifications(panel_db, Interval(notice_at, notice_at + timedelta(minutes=15)), None)
    assert again["notified"] == 0 and sql("SELECT count(*) FROM email_outbox")[0][0] == 1


def test_mapped_per_tenant_sync_as_the_dag_runs_it(graph, panel_db, sql):
    """Office365SyncWork's DAG maps ``sync_tenant`` over ``tenants_to_sync``: each instance syncs
    its tenant; a tenant with refused credentials fails its own instance only."""
    import logging

    from panelflow.step import Interval
    from panelflow.steps.microsoft365.tenant_sync import TenantSyncFailed, sync_tenant, tenants_to_sync

    api = graph(tenants=2, users=30, groups=5, page_size=10)
    t0, t1 = api.tenant_id(0), api.tenant_id(1)
    assert tenants_to_sync(panel_db) == sorted([t0, t1])
    api.issuer.fail_tenant(t1)
    summary = sync_tenant(t0, panel_db, Interval(T0, T0), logging.getLogger("test"))
    assert summary["tenant"] == t0 and summary["users_written"] == 30
    assert _stored(sql, t0) == _expected(api, 0)
    with pytest.raises(TenantSyncFailed):
        sync_tenant(t1, panel_db, Interval(T0, T0), logging.getLogger("test"))
    assert _count(sql, "m365_users", t1) == 0
