"""Partner Center, CSP offers, O365 reconciliation/renewals/orders/licence alerts and Azure retail
prices against the loopback Microsoft sandbox (include/sandbox/microsoft.py + partner_center.py)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from datetime import date
from decimal import Decimal

import httpx
import pendulum
import psycopg
import pytest

from panelflow.hooks.azure_retail_prices import AzureRetailPricesHook, AzureRetailPricesResponseError
from panelflow.hooks.partner_center import (
    PartnerCenterAuthenticationError,
    PartnerCenterHook,
    PartnerCenterResponseError,
    PartnerCenterUnavailable,
)
from panelflow.step import Interval
from panelflow.steps.microsoft365._backend import PartnerCenterSyncFailed
from panelflow.steps.microsoft365.azure_rates import sync_azure_rate_card
from panelflow.steps.microsoft365.csp_offers import sync_csp_offers
from panelflow.steps.microsoft365.licence_alerts import generate_threshold_alerts
from panelflow.steps.microsoft365.orders import order_request_id, process_pending_o365_subscriptions
from panelflow.steps.microsoft365.reconciliation import reconcile_o365_subscriptions
from panelflow.steps.microsoft365.renewals import handle_subscription_renewals

from harness import ROOT
NOW = pendulum.datetime(2026, 11, 20, 5, 10, tz="UTC")
DAY = Interval(NOW.subtract(days=1), NOW)
LOG = logging.getLogger("test_partner_center")
CLIENT, SECRET = "panelflow-tests", "pc-secret-for-tests"
OWN_TABLES = ("csp_profiles", "csp_profile_syncs", "csp_offers", "csp_customers", "o365_subscriptions",
              "o365_subscription_renewals", "o365_orders", "csp_licence_usage", "csp_licence_alerts")


from sandbox import microsoft  # noqa: E402
from sandbox import partner_center as sandbox  # noqa: E402


def at(interval_end) -> Interval:
    return Interval(interval_end.subtract(days=1), interval_end)


def one(sql, query, params=None):
    return sql(query, params)[0][0]


@pytest.fixture
def db(panel_db, migrated_panel_db):
    with psycopg.connect(migrated_panel_db, autocommit=True) as conn:
        conn.execute("TRUNCATE " + ", ".join(OWN_TABLES) + " RESTART IDENTITY CASCADE")
    return panel_db


@pytest.fixture
def pc(monkeypatch):
    """The sandbox with partners ``partner-a`` and ``partner-b`` (pages of 5; retail pages of 4), wired as
    connections ``pc_a``/``pc_b`` and ``azure_retail_prices``; ``pc.connection(tenant, **extra)`` is a
    connection's JSON."""
    from panelflow.dev.postgres import free_port

    issuer = microsoft.TokenIssuer()
    api = sandbox.PartnerCenterApi(issuer, page_size=5, prices_page_size=4, today=date(2026, 11, 1))
    for tenant in ("partner-a", "partner-b"):
        issuer.register(tenant, CLIENT, SECRET)
        api.add_partner(tenant)
    server = microsoft.MicrosoftSandbox([issuer, api], port=free_port()).start()
    api.server, api.issuer = server, issuer

    def connection(tenant: str, **extra) -> str:
        return json.dumps({"conn_type": "panelflow_partner_center", "host": "127.0.0.1", "port": server.port,
                           "schema": "http", "login": CLIENT, "password": extra.pop("secret", SECRET),
                           "extra": {"tenant_id": tenant, "authority": server.url, "timeout": 5, "retries": 8,
                                     "backoff": 0.01, "max_retry_wait": 0.5, "page_size": 5, **extra}})

    api.connection = connection
    monkeypatch.setenv("AIRFLOW_CONN_PC_A", connection("partner-a"))
    monkeypatch.setenv("AIRFLOW_CONN_PC_B", connection("partner-b"))
    monkeypatch.setenv("AIRFLOW_CONN_AZURE_RETAIL_PRICES", json.dumps(
        {"conn_type": "panelflow_azure_retail_prices", "host": "127.0.0.1", "port": server.port, "schema": "http",
         "extra": {"filter": "serviceName eq 'Virtual Machines'", "currencies": ["USD", "GBP"], "timeout": 5,
                   "retries": 5, "backoff": 0.01, "max_retry_wait": 0.5}}))
    yield api
    server.stop()


def profiles(sql):
    a = one(sql, "INSERT INTO csp_profiles (name, conn_id, country) VALUES ('CSP A', 'pc_a', 'GB') RETURNING id")
    b = one(sql, "INSERT INTO csp_profiles (name, conn_id, country) VALUES ('CSP B', 'pc_b', 'GB') RETURNING id")
    return a, b


@pytest.fixture
def panel(db, sql):
    """A provider with customers; ``panel.customer(name, email)``, ``panel.subscribe(customer, offer, qty)``,
    ``panel.tenant(profile, tenant, customer)``."""
    sql("INSERT INTO currencies (code, name) VALUES ('GBP', 'Pound sterling')")
    provider = one(sql, "INSERT INTO providers (name, billing_email, currency)"
                        " VALUES ('Host Ltd', 'billing@host.example', 'GBP') RETURNING id")

    class Panel:
        @staticmethod
        def customer(name, email="it@{}.example"):
            return one(sql, "INSERT INTO customers (provider_id, name, email, country, currency)"
                            " VALUES (%s, %s, %s, 'GB', 'GBP') RETURNING id",
                       (provider, name, email.format(name.split()[0].lower()) if email else None))

        @staticmethod
        def subscribe(customer_id, offer, quantity=1, status="active", plan=None, cycle="monthly"):
            return one(sql, "INSERT INTO subscriptions (customer_id, plan, price, currency, quantity, billing_cycle,"
                            " next_bill_date, started_on, status, o365_offer_id) VALUES (%s, %s, 10, 'GBP', %s, %s,"
                            " '2026-12-01', '2026-01-01', %s, %s) RETURNING id",
                       (customer_id, plan or offer, quantity, cycle, status, offer))

        @staticmethod
        def tenant(profile_id, tenant_id, customer_id, domain=None):
            return one(sql, "INSERT INTO csp_customers (profile_id, tenant_id, customer_id, domain, first_seen_at)"
                            " VALUES (%s, %s, %s, %s, %s) RETURNING id",
                       (profile_id, tenant_id, customer_id, domain, NOW))

    return Panel


# -- the hook -------------------------------------------------------------------------------------


def _hook(sleeps=None, conn_id="pc_a"):
    return PartnerCenterHook(conn_id, sleep=(sleeps.append if sleeps is not None else time.sleep))


def test_hook_pages_with_continuation_tokens_and_one_cached_token(pc):
    for n in range(12):
        pc.add_customer("partner-a", f"Customer {n:02d}")
    with _hook() as hook:
        pages = list(hook.customer_pages())
        assert [len(p.items) for p in pages] == [5, 5, 2]
        assert len({c.tenant_id for p in pages for c in p.items}) == 12
        assert hook.tokens_acquired == 1
    requests = [r for r in pc.requests if r["path"] == "/v1/customers"]
    assert [r["query"].get("seekOperation") for r in requests] == [None, ["Next"], ["Next"]]
    assert pc.issuer.issued == 1


def test_hook_throttling_storm_honours_retry_after_then_backs_off(pc):
    pc.add_customer("partner-a", "Only Ltd")
    sleeps: list[float] = []
    with _hook(sleeps) as hook:
        hook.get_conn()
        hook._token()  # the storm hits the API, not the sign-in
        pc.throttle(4, 429, retry_after=0.05)
        pc.throttle(3, 503, retry_after=None)
        (page,) = list(hook.customer_pages())
    assert [c.company_name for c in page.items] == ["Only Ltd"]
    assert sleeps[:4] == [0.05] * 4                    # Retry-After, as told
    assert 0.16 <= sleeps[4] <= 0.176 and 0.32 <= sleeps[5] <= 0.352  # none: 0.01 × 2⁴, 2⁵ (+ ≤ 10 % jitter)
    assert sleeps[6] == 0.5                                              # 2⁶ × 0.01, capped at max_retry_wait
    assert pc.statuses() == {429: 4, 503: 3, 200: 1}

    pc.throttle(20, 429, retry_after=0.01)
    with _hook([]) as hook, pytest.raises(PartnerCenterUnavailable, match="gave up after 8 attempts"):
        list(hook.customer_pages())


def test_hook_test_connection(pc, monkeypatch):
    pc.add_customer("partner-a", "Only Ltd")
    assert PartnerCenterHook("pc_a").test_connection() == (True, "signed in; Partner Center answered")
    monkeypatch.setenv("AIRFLOW_CONN_PC_WRONG", pc.connection("partner-a", secret="not-the-secret"))
    ok, message = PartnerCenterHook("pc_wrong").test_connection()
    assert not ok and "sign-in to tenant partner-a refused (HTTP 401)" in message and "not-the-secret" not in message


def test_hook_renews_an_expired_token_once(pc):
    for n in range(8):
        pc.add_customer("partner-a", f"Customer {n:02d}")
    with _hook() as hook:
        pages = hook.customer_pages()
        first = next(pages)
        pc.issuer.expire_all()  # the token expires between two pages
        rest = list(pages)
        assert len(first.items) + sum(len(p.items) for p in rest) == 8
        assert hook.tokens_acquired == 2
    assert pc.statuses() == {200: 2, 401: 1}  # the second page: refused once, then answered with the new token

    # a token that is refused again after renewal (the app's access revoked meanwhile) is an error, not a loop
    with _hook() as hook:
        hook._token()
        pc.issuer.expire_all()
        pc.issuer.fail_tenant("partner-a")
        with pytest.raises(PartnerCenterAuthenticationError, match="AADSTS7000215"):
            list(hook.customer_pages())


def test_hook_rejects_a_malformed_page_naming_it(pc):
    for n in range(8):
        pc.add_customer("partner-a", f"Customer {n:02d}")
    pc.malform("customers", page=2)
    with _hook() as hook:
        pages = hook.customer_pages()
        assert len(next(pages).items) == 5
        with pytest.raises(PartnerCenterResponseError, match=r"customer list, page 2: item 2: 'id' is missing.*"
                                                             r"page rejected"):
            next(pages)


# -- SyncCSPOffers --------------------------------------------------------------------------------


def _offers(api, tenant, n, prefix="OFFER"):
    for i in range(n):
        api.add_offer(tenant, f"{prefix}-{i:02d}", f"{prefix.title()} {i:02d}", min_quantity=1, max_quantity=300)


def test_offers_per_profile_many_pages_a_failing_profile_and_reruns(db, sql, pc, monkeypatch):
    a, b = profiles(sql)
    c = one(sql, "INSERT INTO csp_profiles (name, conn_id, country) VALUES ('CSP C', 'pc_c', 'GB') RETURNING id")
    _offers(pc, "partner-a", 12)
    _offers(pc, "partner-b", 3, "BETA")
    pc.issuer.register("partner-c", CLIENT, SECRET)
    _offers(pc, "partner-c", 2)
    monkeypatch.setenv("AIRFLOW_CONN_PC_C", pc.connection("partner-c"))
    pc.issuer.fail_tenant("partner-c")  # its app's credentials are refused
    summary = sync_csp_offers(db, DAY, LOG)
    assert (summary["profiles"], summary["profiles_synced"], summary["pages"]) == (3, 2, 4)
    assert (summary["offers_listed"], summary["offers_added"], summary["offers_changed"]) == (15, 15, 0)
    assert summary["skipped"] == {"CSP profile not synced": 1}
    assert "CSP C" in summary["skipped_examples"][0] and "AADSTS7000215" in summary["skipped_examples"][0]
    assert sql("SELECT profile_id, count(*) FROM csp_offers GROUP BY 1 ORDER BY 1") == [(a, 12), (b, 3)]
    row = sql("SELECT name, category, product_id, min_quantity, max_quantity, billing_cycles, listed, first_seen_at"
              " FROM csp_offers WHERE offer_id = 'OFFER-07'")[0]
    assert row == ("Offer 07", "OnlineServices", "OFFER", 1, 300, ["monthly", "annual"], True, NOW)
    syncs = sql("SELECT profile_id, last_synced_at, last_error IS NULL FROM csp_profile_syncs ORDER BY 1")
    assert syncs == [(a, NOW, True), (b, NOW, True), (c, None, False)]

    # a rerun writes nothing; a later one sees a renamed and a withdrawn offer
    before = sql("SELECT * FROM csp_offers ORDER BY id")
    again = sync_csp_offers(db, DAY, LOG)
    assert (again["offers_added"], again["offers_changed"], again["offers_unlisted"]) == (0, 0, 0)
    assert sql("SELECT * FROM csp_offers ORDER BY id") == before
    pc.add_offer("partner-a", "OFFER-03", "Offer 03 (new name)")
    pc.remove_offer("partner-a", "OFFER-11")
    later = sync_csp_offers(db, at(NOW.add(days=1)), LOG)
    assert (later["offers_added"], later["offers_changed"], later["offers_unlisted"]) == (0, 1, 1)
    assert sql("SELECT offer_id, name, listed, changed_at FROM csp_offers WHERE offer_id IN ('OFFER-03', 'OFFER-11')"
               " ORDER BY 1") == [("OFFER-03", "Offer 03 (new name)", True, NOW.add(days=1)),
                                  ("OFFER-11", "Offer 11", False, NOW.add(days=1))]


def test_offers_malformed_page_is_rejected_whole_and_nothing_unlisted(db, sql, pc):
    a, b = profiles(sql)
    _offers(pc, "partner-a", 12)
    _offers(pc, "partner-b", 3, "BETA")
    sync_csp_offers(db, DAY, LOG)
    pc.remove_offer("partner-a", "OFFER-00")  # would be unlisted by a complete read
    pc.add_offer("partner-a", "OFFER-06", "Offer 06 renamed")  # page 2 (after the removal: OFFER-06 is 6th)
    pc.add_offer("partner-a", "OFFER-02", "Offer 02 renamed")  # page 1
    pc.malform("offers", page=2)  # profile A's second page (A goes first: it was tried longest ago, by id)
    summary = sync_csp_offers(db, at(NOW.add(days=1)), LOG)
    assert summary["profiles_synced"] == 1 and summary["skipped"] == {"CSP profile not synced": 1}
    (example,) = summary["skipped_examples"]
    assert "CSP A" in example and "offers for GB, page 2: item 3: 'id' is missing" in example and "rejected" in example
    names = dict(sql("SELECT offer_id, name FROM csp_offers WHERE profile_id = %s", (a,)))
    assert names["OFFER-02"] == "Offer 02 renamed"       # page 1 was written whole
    assert names["OFFER-06"] == "Offer 06"               # page 2: nothing of it
    assert one(sql, "SELECT listed FROM csp_offers WHERE offer_id = 'OFFER-00'") is True  # incomplete: none unlisted
    assert "page 2" in one(sql, "SELECT last_error FROM csp_profile_syncs WHERE profile_id = %s", (a,))

    # every profile failing fails the step (Airflow retries it and alerts)
    pc.issuer.fail_tenant("partner-a")
    pc.issuer.fail_tenant("partner-b")
    with pytest.raises(PartnerCenterSyncFailed, match="every CSP profile failed"):
        sync_csp_offers(db, at(NOW.add(days=2)), LOG)


# -- ReconciliateO365SubsWork ---------------------------------------------------------------------


def test_reconciliation_records_each_difference_once_per_run(db, sql, pc, panel):
    a, b = profiles(sql)
    _offers(pc, "partner-a", 3)
    alpha, beta, gamma = (panel.customer(n) for n in ("Alpha Ltd", "Beta Ltd", "Gamma Ltd"))
    tenants = {}
    for n in range(11):  # three pages of customers
        tenants[n] = pc.add_customer("partner-a", f"Tenant {n:02d}")
    panel.tenant(a, tenants[0], alpha)
    panel.tenant(a, tenants[1], beta)
    panel.tenant(a, tenants[2], gamma)
    s1 = pc.add_subscription("partner-a", tenants[0], "OFFER-00", 10)                 # matches
    s2 = pc.add_subscription("partner-a", tenants[0], "OFFER-01", 7)                  # quantity differs
    s3 = pc.add_subscription("partner-a", tenants[1], "OFFER-00", 3, status="suspended")  # status differs
    s4 = pc.add_subscription("partner-a", tenants[5], "OFFER-02", 2)                  # tenant unknown to the panel
    pc.add_subscription("partner-a", tenants[6], "OFFER-02", 2, status="deleted")     # gone on both sides: nothing
    p1 = panel.subscribe(alpha, "OFFER-00", 10)
    p2 = panel.subscribe(alpha, "OFFER-01", 5)
    p3 = panel.subscribe(beta, "OFFER-00", 3)
    p4 = panel.subscribe(gamma, "OFFER-01", 4)                                        # not at Partner Center
    panel.subscribe(gamma, "OFFER-02", 1, status="cancelled")                         # cancelled: nothing
    nobody = panel.customer("Nobody Ltd")
    orphan = panel.subscribe(nobody, "OFFER-00", 1)                                   # no tenant anywhere

    summary = reconcile_o365_subscriptions(db, DAY, LOG)
    assert (summary["profiles"], summary["profiles_synced"], summary["customer_pages"]) == (2, 2, 4)  # A 3, B 1
    assert (summary["customers"], summary["customers_added"], summary["subscriptions"]) == (11, 8, 5)
    assert summary["subscriptions_linked"] == 3
    assert summary["skipped"] == {"customer has no Partner Center tenant": 1}
    assert summary["skipped_examples"] == [f"subscription {orphan} of customer {nobody}: customer has no Partner"
                                           " Center tenant"]
    links = dict(sql("SELECT subscription_id, panel_subscription_id FROM o365_subscriptions"))
    assert links[s1["id"]] == p1 and links[s2["id"]] == p2 and links[s3["id"]] == p3 and links[s4["id"]] is None
    rows = sql("SELECT tenant_id, subscription_id, kind, panel_subscription_id, difference, profile_id, reconciled_at"
               " FROM o365_subscription_reconciliations ORDER BY kind, subscription_id")
    assert [(r[1], r[2], r[3]) for r in rows] == [
        (s4["id"], "missing_in_panel", None),
        (f"panel:{p4}", "missing_in_partner_center", p4),
        (s2["id"], "quantity", p2),
        (s3["id"], "status", p3),
    ]
    assert rows[2][4] == {"panel": {"subscription_id": p2, "offer_id": "OFFER-01", "quantity": 5, "status": "active"},
                          "partner_center": {"subscription_id": s2["id"], "offer_id": "OFFER-01", "quantity": 7,
                                             "status": "active"}}
    assert {(r[0], r[5], r[6]) for r in rows} >= {(tenants[0], a, NOW), (tenants[2], a, NOW)}
    assert (summary["differences"], summary["differences_quantity"]) == (4, 1)
    assert pc.issuer.issued == 2  # one token per profile for the whole sync

    # a rerun of the same day replaces that day's record (the quantity was fixed meanwhile)
    sql("UPDATE subscriptions SET quantity = 7 WHERE id = %s", (p2,))
    again = reconcile_o365_subscriptions(db, DAY, LOG)
    assert (again["subscriptions_added"], again["subscriptions_changed"], again["subscriptions_linked"]) == (0, 0, 0)
    assert sql("SELECT kind FROM o365_subscription_reconciliations ORDER BY kind") == [
        ("missing_in_panel",), ("missing_in_partner_center",), ("status",)]
    # the next day is recorded beside it; a subscription gone from Partner Center is unlisted and reported
    pc.partners["partner-a"].subscriptions[tenants[0]].pop(s1["id"])
    nxt = reconcile_o365_subscriptions(db, at(NOW.add(days=1)), LOG)
    assert nxt["subscriptions_unlisted"] == 1 and nxt["differences_missing_in_partner_center"] == 2
    assert one(sql, "SELECT count(*) FROM o365_subscription_reconciliations WHERE reconciled_at = %s",
               (NOW,)) == 3


def test_reconciliation_token_expiring_mid_sync_and_throttling_storm(db, sql, pc, panel):
    a, b = profiles(sql)
    _offers(pc, "partner-a", 2)
    for n in range(14):
        tenant = pc.add_customer("partner-a", f"Tenant {n:02d}")
        pc.add_subscription("partner-a", tenant, "OFFER-00", n + 1)
    pc.after(6, pc.issuer.expire_all)         # mid-sync: after the customer pages and a few subscription reads
    pc.after(9, lambda: pc.throttle(5, 429, retry_after=0.02))
    pc.after(16, lambda: pc.throttle(3, 503, retry_after=None))
    summary = reconcile_o365_subscriptions(db, DAY, LOG)
    assert summary["profiles_synced"] == 2 and summary["skipped"] == {}
    assert (summary["customers"], summary["subscriptions"], summary["subscriptions_added"]) == (14, 14, 14)
    assert pc.statuses()[401] == 1 and pc.statuses()[429] == 5 and pc.statuses()[503] == 3
    assert pc.issuer.issued == 3  # profile A renewed once; profile B signed in once
    assert one(sql, "SELECT sum(quantity) FROM o365_subscriptions") == sum(range(1, 15))


def test_reconciliation_malformed_page_writes_nothing_of_the_profile(db, sql, pc, panel):
    a, b = profiles(sql)
    _offers(pc, "partner-a", 1)
    _offers(pc, "partner-b", 1)
    for n in range(6):
        t = pc.add_customer("partner-a", f"Tenant A{n}")
        pc.add_subscription("partner-a", t, "OFFER-00", 1)
    t = pc.add_customer("partner-b", "Tenant B0")
    pc.add_subscription("partner-b", t, "OFFER-00", 1)
    pc.malform("subscriptions", page=4)  # the 4th customer's subscriptions of profile A
    summary = reconcile_o365_subscriptions(db, DAY, LOG)
    assert summary["profiles_synced"] == 1
    (example,) = summary["skipped_examples"]
    assert example.startswith("CSP A: ") and "subscriptions of customer" in example
    assert "page 1: item 1: 'quantity' is not a count: 'many'; page rejected" in example
    assert sql("SELECT c.profile_id, count(*) FROM csp_customers c GROUP BY 1") == [(b, 1)]
    assert one(sql, "SELECT count(*) FROM o365_subscriptions") == 1


# -- Office365Work: renewals ----------------------------------------------------------------------


def test_renewals_as_partner_center_reports_them(db, sql, pc, panel):
    a, b = profiles(sql)
    _offers(pc, "partner-a", 2)
    cust = panel.customer("Alpha Ltd")
    tenant = pc.add_customer("partner-a", "Alpha")
    panel.tenant(a, tenant, cust)
    ends = date(2026, 11, 19)
    old, new = date(2025, 11, 20), date(2026, 10, 20)  # creation dates: linked to the panel's oldest first
    renewing = pc.add_subscription("partner-a", tenant, "OFFER-00", 5, start=old, commitment_end=ends)
    lapsing = pc.add_subscription("partner-a", tenant, "OFFER-01", 2, start=old, commitment_end=ends,
                                  auto_renew=False)
    slow = pc.add_subscription("partner-a", tenant, "OFFER-00", 1, start=new, commitment_end=ends)
    future = pc.add_subscription("partner-a", tenant, "OFFER-01", 1, start=new, commitment_end=date(2026, 12, 19))
    p_renewing, p_lapsing = panel.subscribe(cust, "OFFER-00", 5), panel.subscribe(cust, "OFFER-01", 2)
    panel.subscribe(cust, "OFFER-00", 1)
    panel.subscribe(cust, "OFFER-01", 1)
    reconcile_o365_subscriptions(db, at(NOW.subtract(days=2)), LOG)  # the mirror, as the daily run leaves it
    pc.renew("partner-a", tenant, renewing["id"])
    pc.renew("partner-a", tenant, lapsing["id"])
    n = len(pc.requests)

    run = Interval(NOW.subtract(minutes=5), NOW)
    summary = handle_subscription_renewals(db, run, LOG)
    assert (summary["due"], summary["renewed"], summary["expired"], summary["not_yet_renewed"]) == (3, 1, 1, 1)
    assert summary["panel_subscriptions_cancelled"] == 1
    asked = sorted(r["path"].rsplit("/", 1)[1] for r in pc.requests[n:])
    assert asked == sorted([renewing["id"], lapsing["id"], slow["id"]])  # the future one is not asked about
    assert sql("SELECT s.subscription_id, r.term_end, r.outcome, r.new_term_end, r.panel_cancelled"
               " FROM o365_subscription_renewals r JOIN o365_subscriptions s ON s.id = r.o365_subscription_id"
               " ORDER BY r.outcome") == [(lapsing["id"], ends, "expired", None, True),
                                          (renewing["id"], ends, "renewed", date(2026, 12, 19), False)]
    assert one(sql, "SELECT status FROM subscriptions WHERE id = %s", (p_lapsing,)) == "cancelled"
    assert one(sql, "SELECT status FROM subscriptions WHERE id = %s", (p_renewing,)) == "active"
    assert one(sql, "SELECT commitment_end_date FROM o365_subscriptions WHERE subscription_id = %s",
               (renewing["id"],)) == date(2026, 12, 19)

    # a rerun asks nothing and records nothing; an hour later the slow one is asked again, and renewed
    n = len(pc.requests)
    again = handle_subscription_renewals(db, run, LOG)
    assert again["due"] == 0 and len(pc.requests) == n
    pc.renew("partner-a", tenant, slow["id"])
    later = handle_subscription_renewals(db, Interval(NOW.add(minutes=60), NOW.add(minutes=65)), LOG)
    assert (later["due"], later["renewed"]) == (1, 1)
    assert one(sql, "SELECT count(*) FROM o365_subscription_renewals") == 3
    assert future["id"] not in [r["path"].rsplit("/", 1)[1] for r in pc.requests]


# -- ProvisioningWork: pending O365 subscriptions -------------------------------------------------


def test_pending_subscriptions_are_ordered_exactly_once(db, sql, pc, panel):
    a, b = profiles(sql)
    _offers(pc, "partner-a", 3)
    cust, late, unknown = panel.customer("Alpha Ltd"), panel.customer("Late Ltd"), panel.customer("Nowhere Ltd")
    tenant = pc.add_customer("partner-a", "Alpha")
    panel.tenant(a, tenant, cust)
    panel.tenant(a, pc.add_customer("partner-a", "Late"), late)
    lost = panel.subscribe(cust, "OFFER-00", 5, plan="Business Basic")    # answer lost, resent by the hook
    killed = panel.subscribe(cust, "OFFER-01", 2, cycle="yearly")         # placed by a try that died before recording
    refused = panel.subscribe(cust, "NO-SUCH-OFFER", 1)
    waiting = panel.subscribe(unknown, "OFFER-02", 1)                      # its customer has no tenant yet
    other = panel.subscribe(late, "OFFER-02", 3)                          # another tenant, ordered plainly
    for s in (lost, killed, refused, waiting, other):
        sql("INSERT INTO o365_orders (subscription_id, requested_at) VALUES (%s, %s)", (s, NOW.subtract(minutes=s)))

    with _hook() as hook:  # the earlier try that placed an order and was killed before writing it down
        earlier = hook.place_order(tenant, request_id=order_request_id(killed, 1), offer_id="OFFER-01",
                                   quantity=2, billing_cycle="annual")
    pc.lose_next_order_answer()
    run = Interval(NOW.subtract(minutes=10), NOW)
    summary = process_pending_o365_subscriptions(db, run, LOG)
    assert (summary["pending"], summary["orders_placed"], summary["orders_replayed"]) == (5, 3, 2)
    assert (summary["orders_failed"], summary["orders_waiting"]) == (1, 1)
    assert summary["skipped"] == {"customer has no Partner Center tenant yet": 1, "Partner Center refused the order": 1}
    assert len(pc.orders) == 3  # one order each: the lost answer and the killed try were resent, and replayed
    assert sorted(o["request_id"] for o in pc.orders) == sorted(
        order_request_id(s, 1) for s in (lost, killed, other))
    placed = {r[0]: r[1:] for r in sql("SELECT subscription_id, status, order_id, o365_subscription_id,"
                                       " request_id::text, tries, ordered_quantity, ordered_billing_cycle"
                                       " FROM o365_orders")}
    assert placed[killed][1] == earlier.id and placed[killed][0] == "placed"
    assert placed[lost][0] == "placed" and placed[lost][3] == order_request_id(lost, 1)
    assert placed[refused][0] == "failed" and placed[waiting][0] == "pending"
    assert placed[killed][5:] == (2, "annual")
    links = dict(sql("SELECT panel_subscription_id, subscription_id FROM o365_subscriptions"))
    assert links[lost] == placed[lost][2] and links[killed] == placed[killed][2] and links[other]
    assert "NO-SUCH-OFFER" in one(sql, "SELECT last_error FROM o365_orders WHERE subscription_id = %s", (refused,))

    # a rerun orders nothing again; the customer that gets a tenant is ordered for then
    n = len(pc.orders)
    again = process_pending_o365_subscriptions(db, run, LOG)
    assert again["orders_placed"] == 0 and len(pc.orders) == n
    panel.tenant(a, pc.add_customer("partner-a", "Nowhere"), unknown)
    process_pending_o365_subscriptions(db, Interval(NOW, NOW.add(minutes=10)), LOG)
    assert one(sql, "SELECT status FROM o365_orders WHERE subscription_id = %s", (waiting,)) == "placed"
    assert len(pc.orders) == n + 1


def test_orders_kept_pending_while_partner_center_is_unavailable(db, sql, pc, panel):
    a, b = profiles(sql)
    _offers(pc, "partner-a", 1)
    cust = panel.customer("Alpha Ltd")
    tenant = pc.add_customer("partner-a", "Alpha")
    panel.tenant(a, tenant, cust)
    sub = panel.subscribe(cust, "OFFER-00", 4)
    sql("INSERT INTO o365_orders (subscription_id, requested_at) VALUES (%s, %s)", (sub, NOW.subtract(hours=1)))
    with _hook() as hook:  # signed in: the storm hits the order itself
        hook._token()
    pc.throttle(100, 503, retry_after=None)
    with pytest.raises(PartnerCenterSyncFailed):
        process_pending_o365_subscriptions(db, Interval(NOW, NOW), LOG)
    assert sql("SELECT status, tries FROM o365_orders") == [("pending", 1)]
    assert "gave up after 8 attempts" in one(sql, "SELECT last_error FROM o365_orders")
    assert pc.orders == []
    pc.calm()
    # the quantity changes before the next try: the resend is still the first request (same id, same body)
    sql("UPDATE subscriptions SET quantity = 9 WHERE id = %s", (sub,))
    summary = process_pending_o365_subscriptions(db, Interval(NOW, NOW.add(minutes=10)), LOG)
    assert summary["orders_placed"] == 1
    assert [o["order"]["lineItems"][0]["quantity"] for o in pc.orders] == [4]

    # a subscription cancelled after an unconfirmed try is not sent again (it could be placed only now)
    second = panel.subscribe(cust, "OFFER-00", 1)
    sql("INSERT INTO o365_orders (subscription_id, requested_at) VALUES (%s, %s)", (second, NOW))
    pc.throttle(100, 503, retry_after=None)
    with pytest.raises(PartnerCenterSyncFailed):
        process_pending_o365_subscriptions(db, Interval(NOW, NOW.add(minutes=20)), LOG)
    pc.calm()
    sql("UPDATE subscriptions SET status = 'cancelled' WHERE id = %s", (second,))
    n = len(pc.requests)
    cancelled = process_pending_o365_subscriptions(db, Interval(NOW, NOW.add(minutes=30)), LOG)
    assert cancelled["orders_failed"] == 1 and len(pc.requests) == n and len(pc.orders) == 1
    assert "after 1 unconfirmed try" in one(sql, "SELECT last_error FROM o365_orders WHERE subscription_id = %s",
                                            (second,))


# -- ProvisioningWork: O365/CSP licence threshold alerts ------------------------------------------


def test_licence_threshold_alerts_once_per_crossing(db, sql, pc, panel):
    a, b = profiles(sql)
    alpha, quiet = panel.customer("Alpha Ltd"), panel.customer("Quiet Ltd", email=None)
    ta, tq = pc.add_customer("partner-a", "Alpha"), pc.add_customer("partner-a", "Quiet")
    panel.tenant(a, ta, alpha, "alpha.onmicrosoft.com")
    panel.tenant(a, tq, quiet)
    pc.set_usage("partner-a", ta, "sku-e3", "Office 365 E3", active=20, consumed=19)      # 95 %: over
    pc.set_usage("partner-a", ta, "sku-bp", "Business Premium", active=10, consumed=5)    # 50 %
    pc.set_usage("partner-a", tq, "sku-e1", "Office 365 E1", active=0, consumed=1)        # more used than bought

    t0 = Interval(NOW.subtract(minutes=10), NOW)
    summary = generate_threshold_alerts(db, t0, LOG)
    assert (summary["tenants_read"], summary["skus_measured"], summary["skus_over"]) == (2, 3, 2)
    assert (summary["alerts_opened"], summary["emails_queued"]) == (2, 1)
    assert summary["skipped"] == {"customer has no usable e-mail address": 1}
    (subject, to, body) = sql("SELECT subject, to_address, body_text FROM email_outbox")[0]
    assert subject == "19 of 20 Office 365 E3 licences in use (alpha.onmicrosoft.com)" and to == "it@alpha.example"
    assert "(95 %)" in body and "1 licence is left to assign" in body
    assert sql("SELECT sku_id, outbox_key IS NOT NULL FROM csp_licence_alerts ORDER BY sku_id") == [
        ("sku-e1", False), ("sku-e3", True)]

    # the same run again, and the next runs while it stays over: no new alert, no new mail, no new reads
    n = len(pc.requests)
    assert generate_threshold_alerts(db, t0, LOG)["alerts_opened"] == 0
    t1 = Interval(NOW, NOW.add(minutes=10))
    s1 = generate_threshold_alerts(db, t1, LOG)
    assert (s1["alerts_opened"], s1["alerts_still_open"], s1["tenants_read"]) == (0, 2, 0) and len(pc.requests) == n
    # under again (licences bought): cleared once usage is read again; over again later: a new alert and mail
    pc.set_usage("partner-a", ta, "sku-e3", "Office 365 E3", active=30, consumed=19)
    t2 = Interval(NOW.add(hours=7), NOW.add(hours=7, minutes=10))
    s2 = generate_threshold_alerts(db, t2, LOG)
    assert (s2["tenants_read"], s2["alerts_cleared"], s2["alerts_opened"]) == (2, 1, 0)
    pc.set_usage("partner-a", ta, "sku-e3", "Office 365 E3", active=30, consumed=30)
    t3 = Interval(NOW.add(hours=14), NOW.add(hours=14, minutes=10))
    s3 = generate_threshold_alerts(db, t3, LOG)
    assert (s3["alerts_opened"], s3["emails_queued"]) == (1, 1)
    assert sql("SELECT sku_id, opened_at, cleared_at FROM csp_licence_alerts WHERE sku_id = 'sku-e3' ORDER BY id") == [
        ("sku-e3", NOW, t2.end), ("sku-e3", t3.end, None)]
    assert one(sql, "SELECT count(*) FROM email_outbox") == 2
    assert "No licences are left to assign" in one(sql, "SELECT body_text FROM email_outbox ORDER BY id DESC LIMIT 1")


# -- AzureRateWork --------------------------------------------------------------------------------


def _prices(api, n, currency="USD", start="2026-01-01T00:00:00Z", service="Virtual Machines"):
    for i in range(n):
        price = float(Decimal("0.0123456789") * (i + 1))  # as JSON numbers, exact to 10 places
        api.add_price(meterName=f"D{i} v3", meterId=f"meter-{i:02d}", currencyCode=currency,
                      retailPrice=price, unitPrice=price,
                      effectiveStartDate=start, serviceName=service)


def test_azure_retail_prices_paged_stored_by_effective_date(db, sql, pc):
    _prices(pc, 10)
    _prices(pc, 3, "GBP")
    _prices(pc, 5, service="Storage")  # not in the connection's filter
    pc.throttle(2, 429, retry_after=0.02)
    summary = sync_azure_rate_card(db, DAY, LOG)
    assert (summary["currencies"], summary["pages"], summary["prices_read"], summary["rates_added"]) == (2, 4, 13, 13)
    paths = [(r["query"].get("$skip"), r["query"].get("currencyCode"), r["status"]) for r in pc.requests]
    assert paths == [(None, ["'USD'"], 429), (None, ["'USD'"], 429), (None, ["'USD'"], 200), (["4"], ["'USD'"], 200),
                     (["8"], ["'USD'"], 200), (None, ["'GBP'"], 200)]
    row = sql("SELECT unit_price, retail_price, effective_date, region, price_type, source, fetched_at, meter_name"
              " FROM azure_rates WHERE meter_id = 'meter-09' AND currency = 'USD'")
    assert row == [(Decimal("0.1234567890"), Decimal("0.1234567890"), date(2026, 1, 1), "uksouth", "Consumption",
                    "retail_prices", NOW, "D9 v3")]

    # a rerun rewrites nothing; a new price list effective later adds rows and keeps the old ones
    assert sync_azure_rate_card(db, DAY, LOG)["rates_added"] == 0
    assert one(sql, "SELECT count(*) FROM azure_rates WHERE changed_at = %s", (NOW,)) == 13
    pc.prices[:] = [p for p in pc.prices if p["meterId"] != "meter-01"]
    pc.add_price(meterName="D1 v3", meterId="meter-01", currencyCode="USD", retailPrice=0.05, unitPrice=0.05,
                 effectiveStartDate="2026-12-01T00:00:00Z")
    later = sync_azure_rate_card(db, at(NOW.add(days=1)), LOG)
    assert (later["rates_added"], later["rates_repriced"]) == (1, 0)
    assert sql("SELECT effective_date, unit_price FROM azure_rates WHERE meter_id = 'meter-01' AND currency = 'USD'"
               " ORDER BY 1") == [(date(2026, 1, 1), Decimal("0.0246913578")), (date(2026, 12, 1), Decimal("0.05"))]
    # a price corrected for the same effective date is updated in place
    next(p for p in pc.prices if p["meterId"] == "meter-02" and p["currencyCode"] == "USD")["unitPrice"] = 0.04
    fixed = sync_azure_rate_card(db, at(NOW.add(days=2)), LOG)
    assert (fixed["rates_added"], fixed["rates_repriced"], fixed["rates_refreshed"]) == (0, 1, 0)
    assert sql("SELECT unit_price, retail_price, changed_at, fetched_at FROM azure_rates"
               " WHERE meter_id = 'meter-02' AND currency = 'USD'") == [
        (Decimal("0.04"), Decimal("0.0370370367"), NOW.add(days=2), NOW.add(days=2))]
    # rates still listed a month on get a fresh fetched_at (the retention step's clock), once a month only
    month = sync_azure_rate_card(db, at(NOW.add(days=31)), LOG)
    assert (month["rates_added"], month["rates_repriced"], month["rates_refreshed"]) == (0, 0, 10)
    assert sql("SELECT meter_id, currency, effective_date, fetched_at FROM azure_rates WHERE fetched_at < %s"
               " ORDER BY 1, 2, 3", (NOW.add(days=31),)) == [
        ("meter-01", "GBP", date(2026, 1, 1), NOW),                # no longer listed: ages out
        ("meter-01", "USD", date(2026, 1, 1), NOW),                # superseded: ages out
        ("meter-01", "USD", date(2026, 12, 1), NOW.add(days=1)),   # fetched within the month
        ("meter-02", "USD", date(2026, 1, 1), NOW.add(days=2))]


def test_azure_retail_prices_malformed_page_rejected_with_no_partial_write(db, sql, pc):
    _prices(pc, 10)
    pc.malform("prices", page=2)
    with pytest.raises(AzureRetailPricesResponseError) as err:
        sync_azure_rate_card(db, DAY, LOG)
    message = str(err.value)
    assert "USD prices, page 2: item 3 (meter m-bad): 'retailPrice' is not a number: 'n/a'" in message
    assert "nothing of it written" in message
    assert [r[0] for r in sql("SELECT meter_id FROM azure_rates ORDER BY meter_id")] == [
        f"meter-{i:02d}" for i in range(4)]  # page 1 only

    with AzureRetailPricesHook(sleep=lambda s: None) as hook:
        with pytest.raises(Exception, match="Invalid OData filter term"):
            list(hook.price_pages("USD", "serviceName ne 'x'"))


# -- the sandbox on the command line (what make run starts) ---------------------------------------


def test_sandbox_command_line_and_the_make_run_connections(db, sql, monkeypatch):
    """The sandbox as ``make run`` starts it, and the steps through the connections it would wire."""
    from panelflow.dev.postgres import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "sandbox.microsoft", "--port", str(port),
                             "--pc-customers", "3", "--pc-offers", "12", "--retail-prices", "10"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT / "include")
    try:
        assert "partner_center" in proc.stdout.readline()
        base = f"http://127.0.0.1:{port}"
        monkeypatch.setenv("AIRFLOW_CONN_PARTNER_CENTER", json.dumps({
            "conn_type": "panelflow_partner_center", "host": "127.0.0.1", "port": port, "schema": "http",
            "login": "panelflow-partner-center", "password": "pc_test_sandbox",
            "extra": {"tenant_id": "sandbox-partner", "authority": base, "timeout": 10}}))
        monkeypatch.setenv("AIRFLOW_CONN_AZURE_RETAIL_PRICES", json.dumps({
            "conn_type": "panelflow_azure_retail_prices", "host": "127.0.0.1", "port": port, "schema": "http",
            "extra": {"currencies": ["USD", "GBP"], "timeout": 10}}))
        sql("INSERT INTO csp_profiles (name, conn_id, country) VALUES ('Sandbox CSP', 'partner_center', 'GB')")
        assert sync_csp_offers(db, DAY, LOG)["offers_added"] == 12
        reconciled = reconcile_o365_subscriptions(db, DAY, LOG)
        assert (reconciled["customers_added"], reconciled["subscriptions_added"]) == (3, 8)
        assert reconciled["differences_missing_in_panel"] == 8  # no panel customer is linked to a tenant yet
        assert sync_azure_rate_card(db, DAY, LOG)["rates_added"] == 20
        prices = httpx.get(f"{base}/api/retail/prices", params={"currencyCode": "'GBP'"}).json()
        assert prices["Count"] == 10 and prices["BillingCurrency"] == "GBP"
        # BillingWork 5 reads the partner's price sheets: Partner Center's /v1.0/sales route, not
        # Graph's /v1.0 (which does not know the partner's tenant) answers them
        from panelflow.steps.o365_prices import o365_price_update_notifications

        assert o365_price_update_notifications(db, DAY, {}, LOG)["price_rows_published"] >= 0
        assert sql("SELECT count(*) FROM o365_price_sheets")[0][0] >= 1
    finally:
        proc.terminate()
        assert proc.wait(10) == 0
