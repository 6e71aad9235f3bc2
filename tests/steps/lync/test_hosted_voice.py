"""ProvisioningWork 32–33: hosted voice contracts executed once per contract and day, and their users
billed through the subscription's add-on by BillingWork's own invoicing."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from decimal import Decimal as D
from zoneinfo import ZoneInfo

from panelflow.step import Interval, StepReport
from panelflow.steps.billing import invoice_due_subscriptions
from panelflow.steps.lync.hosted_voice import execute_hosted_voice_contracts, insert_hosted_voice_billing_details
from panelflow.steps.lync.jobs import process_lync_group_actions
from steps.lync.records import FE01, POOL01_FQDN, customer, lync_user, subscription

LONDON = ZoneInfo("Europe/London")
UTC = ZoneInfo("UTC")


def provisioning_run(day: date, hour=9, minute=0) -> Interval:
    """A ProvisioningWork run (every 10 minutes, no data interval: start = end = the run's time)."""
    end = datetime(day.year, day.month, day.day, hour, minute, tzinfo=LONDON).astimezone(UTC)
    return Interval(end, end, "Europe/London")


def contract(sql, sub, pool, starts_on, ends_on, *, term=1, auto_renew=True, status="pending", price="12.50"):
    return sql("INSERT INTO hosted_voice_contracts (subscription_id, pool_id, starts_on, term_months, auto_renew,"
               " ends_on, user_price, status) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
               (sub, pool, starts_on, term, auto_renew, ends_on, price, status))[0][0]


def jobs(sql):
    return sql("SELECT action, payload FROM group_action_jobs WHERE backend = 'lync' ORDER BY id")


TODAY = date(2026, 2, 28)


def test_todays_starts_renewals_and_ends_executed_once(recorded_powershell, pools, billing, sql):
    cust = customer(sql)
    pool = pools["POOL01"]
    starting = subscription(sql, cust, due=TODAY, status="suspended")
    renewing = subscription(sql, cust, due=TODAY)
    ending = subscription(sql, cust, due=TODAY)
    later = subscription(sql, cust, due=TODAY, status="suspended")
    lync_user(sql, pool, "sip:ann@contoso.com", subscription=starting, customer=cust, ad_user="CONTOSO\\ann",
              line_uri="tel:+442071230001", voice=True, voice_policy="UK-National")
    lync_user(sql, pool, "sip:ben@contoso.com", subscription=starting, customer=cust)
    lync_user(sql, pools["POOL02"], "sip:other-pool@contoso.com", subscription=starting, customer=cust)
    lync_user(sql, pool, "sip:cat@contoso.com", subscription=ending, customer=cust, enabled=True)
    sql("INSERT INTO lync_users (pool_id, subscription_id, sip_address, ad_user, changed_at, removed_at)"
        " VALUES (%s, %s, 'sip:gone@contoso.com', 'gone', now(), now())", (pool, ending))
    c_start = contract(sql, starting, pool, TODAY, date(2026, 3, 28))
    c_renew = contract(sql, renewing, pool, date(2025, 12, 31), TODAY, status="active")
    c_end = contract(sql, ending, pool, date(2025, 2, 27), TODAY - timedelta(days=1), term=12, auto_renew=False,
                     status="active")    # due yesterday: the scheduler missed that day
    contract(sql, later, pool, TODAY + timedelta(days=1), date(2026, 4, 1))

    summary = execute_hosted_voice_contracts(billing, provisioning_run(TODAY, 0, 10))
    assert summary["day"] == "2026-02-28"
    assert {k: summary[k] for k in ("contracts_started", "subscriptions_activated", "enable_jobs_queued",
                                    "contracts_renewed", "contracts_ended", "subscriptions_cancelled",
                                    "disable_jobs_queued")} == {
        "contracts_started": 1, "subscriptions_activated": 1, "enable_jobs_queued": 2, "contracts_renewed": 1,
        "contracts_ended": 1, "subscriptions_cancelled": 1, "disable_jobs_queued": 1}
    assert jobs(sql) == [
        ("enable_user", {"pool": "POOL01", "ad_user": "CONTOSO\\ann", "sip_address": "sip:ann@contoso.com",
                         "line_uri": "tel:+442071230001", "voice_policy": "UK-National", "subscription_id": starting,
                         "customer_id": cust, "contract_id": c_start}),
        ("enable_user", {"pool": "POOL01", "ad_user": "ben@contoso.com", "sip_address": "sip:ben@contoso.com",
                         "subscription_id": starting, "customer_id": cust, "contract_id": c_start}),
        ("disable_user", {"pool": "POOL01", "sip_address": "sip:cat@contoso.com", "contract_id": c_end}),
    ]
    assert sql("SELECT id, status, ends_on FROM hosted_voice_contracts ORDER BY id") == [
        (c_start, "active", date(2026, 3, 28)), (c_renew, "active", date(2026, 3, 31)),   # anchored on the 31st
        (c_end, "ended", TODAY - timedelta(days=1)), (c_end + 1, "pending", date(2026, 4, 1))]
    assert sql("SELECT id, status FROM subscriptions ORDER BY id") == [
        (starting, "active"), (renewing, "active"), (ending, "cancelled"), (later, "suspended")]
    assert sql("SELECT contract_id, day, action, jobs_queued FROM hosted_voice_contract_actions"
               " ORDER BY contract_id") == [
        (c_start, TODAY, "start", 2), (c_renew, TODAY, "renew", 0), (c_end, TODAY - timedelta(days=1), "end", 1)]

    # every later run of the day (and a rerun of this one) executes nothing again
    for run in (provisioning_run(TODAY, 0, 10), provisioning_run(TODAY, 0, 20), provisioning_run(TODAY, 23, 50)):
        again = execute_hosted_voice_contracts(billing, run)
        assert again["contracts_started"] == again["contracts_renewed"] == again["contracts_ended"] == 0
    assert len(jobs(sql)) == 3 and sql("SELECT count(*) FROM hosted_voice_contract_actions") == [(3,)]

    # GroupActionWorkLync then applies them on the pool: the contract's users as parameters
    recorded_powershell.answer("lync/enable_user", lambda cmd: [{
        "SipAddress": cmd.parameters["SipAddress"], "Enabled": True, "RegistrarPool": POOL01_FQDN,
        "EnterpriseVoiceEnabled": "LineUri" in cmd.parameters, "LineURI": cmd.parameters.get("LineUri", ""),
        "VoicePolicy": cmd.parameters.get("VoicePolicy", ""), "ConferencingPolicy": "", "Changed": ["Enabled"]}])
    recorded_powershell.answer("lync/set_user_state", [{
        "Found": True, "SipAddress": "sip:cat@contoso.com", "Enabled": False, "Changed": ["Enabled"]}])
    done = process_lync_group_actions(billing, provisioning_run(TODAY, 0, 14))
    assert done["succeeded"] == 3
    assert [(c.script, c.conn_host, c.parameters) for c in recorded_powershell.sent] == [
        ("lync/enable_user", FE01, {"Identity": "CONTOSO\\ann", "SipAddress": "sip:ann@contoso.com",
                                    "RegistrarPool": POOL01_FQDN, "LineUri": "tel:+442071230001",
                                    "VoicePolicy": "UK-National"}),
        ("lync/enable_user", FE01, {"Identity": "ben@contoso.com", "SipAddress": "sip:ben@contoso.com",
                                    "RegistrarPool": POOL01_FQDN}),
        ("lync/set_user_state", FE01, {"Identity": "sip:cat@contoso.com", "Enabled": False}),
    ]
    assert sql("SELECT sip_address, enabled, edition FROM lync_users WHERE pool_id = %s AND removed_at IS NULL"
               " ORDER BY sip_address", (pool,)) == [
        ("sip:ann@contoso.com", True, "Plus"), ("sip:ben@contoso.com", True, "Standard"),
        ("sip:cat@contoso.com", False, "Standard")]


def test_billing_details_feed_the_addon_billingwork_invoices(pools, billing, sql):
    cust = customer(sql)
    pool = pools["POOL01"]
    sub = subscription(sql, cust, due=date(2026, 3, 1), price="20.00")
    users = {name: lync_user(sql, pool, f"sip:{name}@contoso.com", subscription=sub, customer=cust, enabled=enabled,
                             voice=True)
             for name, enabled in (("ann", True), ("ben", True), ("cat", False))}
    lync_user(sql, pool, "sip:other@contoso.com", enabled=True)   # no subscription: not billed here
    c = contract(sql, sub, pool, date(2026, 2, 1), date(2026, 3, 1), status="active")

    first = insert_hosted_voice_billing_details(billing, provisioning_run(date(2026, 2, 10)))
    assert (first["month"], first["details_added"], first["billed_users"], first["addons_created"]) == (
        "2026-02-01", 2, 2, 1)
    addon = sql("SELECT addon_id FROM hosted_voice_contracts WHERE id = %s", (c,))[0][0]
    assert sql("SELECT subscription_id, name, price, quantity, status FROM subscription_addons WHERE id = %s",
               (addon,)) == [(sub, "Hosted voice users", D("12.50"), 2, "active")]

    # cat is enabled on the 20th, ann disabled on the 25th: February bills all three, once each
    sql("UPDATE lync_users SET enabled = true WHERE id = %s", (users["cat"],))
    insert_hosted_voice_billing_details(billing, provisioning_run(date(2026, 2, 20)))
    sql("UPDATE lync_users SET enabled = false WHERE id = %s", (users["ann"],))
    for _ in range(2):
        again = insert_hosted_voice_billing_details(billing, provisioning_run(date(2026, 2, 25)))
    assert (again["details_added"], again["billed_users"], again["addons_created"]) == (0, 3, 0)
    assert sql("SELECT month, sip_address, edition, unit_price FROM hosted_voice_billing_details ORDER BY 2") == [
        (date(2026, 2, 1), f"sip:{n}@contoso.com", "Plus", D("12.50")) for n in ("ann", "ben", "cat")]
    assert sql("SELECT quantity FROM subscription_addons WHERE id = %s", (addon,)) == [(3,)]

    # 1 March, before BillingWork's run: March counts the users enabled now (ben, cat)
    march = insert_hosted_voice_billing_details(billing, provisioning_run(date(2026, 3, 1), 0, 10))
    assert (march["month"], march["billed_users"], march["addons_created"]) == ("2026-03-01", 2, 0)

    report = StepReport()
    with billing.get_conn() as conn:
        conn.autocommit = True
        invoice_due_subscriptions(conn, date(2026, 3, 1), date(2026, 3, 2), report)
    assert report.counts["invoices"] == 1
    assert sql("SELECT l.kind, l.description, l.quantity, l.unit_price, l.amount, l.tax_amount"
               " FROM invoice_lines l JOIN invoices i ON i.id = l.invoice_id WHERE i.customer_id = %s"
               " ORDER BY l.addon_id", (cust,)) == [
        ("subscription", "Hosted Voice (monthly)", D("1"), D("20.00"), D("20.00"), D("4.00")),
        ("addon", "Hosted voice users (add-on to Hosted Voice)", D("2"), D("12.50"), D("25.00"), D("5.00"))]
    assert sql("SELECT subtotal, tax, total FROM invoices WHERE customer_id = %s", (cust,)) == [
        (D("45.00"), D("9.00"), D("54.00"))]


def test_addon_cancelled_when_no_user_is_left_or_the_contract_ended(pools, billing, sql):
    cust = customer(sql)
    pool = pools["POOL01"]
    sub = subscription(sql, cust, due=date(2026, 4, 1))
    lync_user(sql, pool, "sip:ann@contoso.com", subscription=sub, customer=cust, enabled=True)
    c = contract(sql, sub, pool, date(2026, 2, 1), date(2026, 3, 1), status="active")
    insert_hosted_voice_billing_details(billing, provisioning_run(date(2026, 2, 10)))
    sql("UPDATE lync_users SET enabled = false")
    insert_hosted_voice_billing_details(billing, provisioning_run(date(2026, 3, 2)))    # March: nobody
    assert sql("SELECT quantity, status FROM subscription_addons") == [(1, "cancelled")]
    sql("UPDATE lync_users SET enabled = true")
    insert_hosted_voice_billing_details(billing, provisioning_run(date(2026, 3, 3)))
    assert sql("SELECT quantity, status FROM subscription_addons") == [(1, "active")]
    sql("UPDATE hosted_voice_contracts SET status = 'ended' WHERE id = %s", (c,))
    summary = insert_hosted_voice_billing_details(billing, provisioning_run(date(2026, 3, 4)))
    assert (summary["contracts"], summary["addons_cancelled"]) == (0, 1)
    assert sql("SELECT status FROM subscription_addons") == [("cancelled",)]

    # the customer signs again: the new contract bills through an add-on of its own
    again = contract(sql, sub, pool, date(2026, 3, 10), date(2026, 4, 10), status="active", price="15.00")
    summary = insert_hosted_voice_billing_details(billing, provisioning_run(date(2026, 3, 11)))
    assert (summary["contracts"], summary["addons_created"]) == (1, 1)
    assert sql("SELECT c.id, a.price, a.quantity, a.status FROM hosted_voice_contracts c"
               " JOIN subscription_addons a ON a.id = c.addon_id ORDER BY c.id") == [
        (c, D("12.50"), 1, "cancelled"), (again, D("15.00"), 1, "active")]


def test_nothing_configured_is_nothing_to_do(panel_db):
    assert execute_hosted_voice_contracts(panel_db, provisioning_run(TODAY))["contracts_started"] == 0
    assert insert_hosted_voice_billing_details(panel_db, provisioning_run(TODAY))["contracts"] == 0
