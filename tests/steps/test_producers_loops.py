"""Closed loops: a table a step reads is filled by what the product really does, not by the test.

- An Exchange mailbox deleted through GroupActionWorkEx (the job through ``process_group_actions``, the
  script at the PSRP boundary) becomes one recycle-bin item, and ProvisioningWork 41 sends its notice
  once however often it runs or the deletion is repeated. So does one whose status GroupActionWorkEx 5
  corrects into the bin; the purge (GroupActionWorkEx 7) takes the item out of the bin.
- Partner Center's price sheets (the Microsoft sandbox's "Get a price sheet") fill ``o365_price_lists``
  once per sheet version; BillingWork 5 announces the change they bring, ProvisioningWork 19 names a
  subscription from them.
- UsageReportWork 2 takes the add-on usage report from the panel's add-ons once per month.
- Migration 0038 keeps what ``csp_trials`` held and puts mailboxes already in the bin into it.
(ProvisioningWork 24 reading the reconciliation's trials: tests/steps/test_provisioning_housekeeping.py.)
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from psycopg.types.json import Jsonb

from panelflow.step import Interval

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=timezone.utc)
GUID = "0000000a-5a1e-4c3b-9d2e-7f6a5b4c3d2e"
OU = "OU=Contoso,OU=Hosting,DC=hosting,DC=local"


def _at(end):
    return Interval(end - timedelta(minutes=5), end, "Europe/London")


@pytest.fixture
def exchange(recorded_powershell, panel_db, sql, monkeypatch):
    """Exchange server EX01 (psrp connection exch_ex01) with the organisation of customer Contoso Ltd."""
    sql("TRUNCATE exchange_mailboxes, exchange_organizations, exchange_servers, group_action_jobs, recycle_bin_items,"
        " recycle_bin_notices RESTART IDENTITY CASCADE")
    monkeypatch.setenv("AIRFLOW_CONN_EXCH_EX01", recorded_powershell.connection("ex01.hosting.test", auth="ntlm"))
    sql("INSERT INTO currencies VALUES ('GBP', 'Pound sterling', 2)")
    sql("INSERT INTO providers (name, billing_email, currency) VALUES ('Test Hosting', 'billing@test.example', 'GBP')")
    customer = sql("INSERT INTO customers (provider_id, name, email, country, currency) VALUES"
                   " (1, 'Contoso Ltd', 'it@contoso.example', 'GB', 'GBP') RETURNING id")[0][0]
    sql("INSERT INTO exchange_servers (name, fqdn, conn_id, roles) VALUES"
        " ('EX01', 'ex01.hosting.test', 'exch_ex01', '{Mailbox}')")
    sql("INSERT INTO exchange_organizations (customer_id, exchange_server_id, name, organizational_unit,"
        " accepted_domains) VALUES (%s, 1, 'Contoso', %s, '{contoso.example}')", (customer, OU))
    return customer


def test_a_mailbox_deleted_by_groupactionworkex_gets_exactly_one_recycle_bin_notice(exchange, recorded_powershell,
                                                                                    panel_db, sql):
    from panelflow.steps.exchange.jobs import process_exchange_group_actions
    from panelflow.steps.recycle_bin import send_recycle_bin_notifications

    mailbox = sql("INSERT INTO exchange_mailboxes (organization_id, exchange_server_id, alias, display_name,"
                  " primary_smtp_address, status, previous_status, exchange_guid, database) VALUES"
                  " (1, 1, 'eve.evans', 'Eve Evans', 'eve.evans@contoso.example', 'pending', 'active', %s, 'DB01')"
                  " RETURNING id", (GUID,))[0][0]
    recorded_powershell.answer("exchange/remove_mailbox", [{"Identity": GUID, "ExchangeGuid": GUID, "Database": "DB01",
                                                             "Removed": True, "AlreadyAbsent": False}])

    def delete():
        sql("INSERT INTO group_action_jobs (backend, action, payload) VALUES ('exchange', 'delete_mailbox', %s)",
            (Jsonb({"mailbox_id": mailbox}),))

    delete()
    assert process_exchange_group_actions(panel_db, _at(T0), {}, None)["succeeded"] == 1
    assert [c.script for c in recorded_powershell.sent] == ["exchange/remove_mailbox"]
    items = sql("SELECT customer_id, kind, name, deleted_at, purge_at, exchange_mailbox_id FROM recycle_bin_items")
    assert items == [(exchange, "mailbox", "eve.evans@contoso.example", T0, T0 + timedelta(days=30), mailbox)]

    # the same deletion queued again (or the job re-taken after a lost worker): Exchange says it is gone, no new item
    recorded_powershell.answer("exchange/remove_mailbox", [{"Identity": GUID, "ExchangeGuid": None, "Database": None,
                                                             "Removed": False, "AlreadyAbsent": True}])
    delete()
    assert process_exchange_group_actions(panel_db, _at(T0 + timedelta(minutes=5)), {}, None)["succeeded"] == 1
    assert sql("SELECT count(*) FROM recycle_bin_items") == [(1,)]

    # ProvisioningWork 41: nothing before the first reminder (7 days before the purge), then one notice, once
    assert send_recycle_bin_notifications(panel_db, _at(T0 + timedelta(days=22)))["notices"] == 0
    due = T0 + timedelta(days=23, hours=1)
    first = send_recycle_bin_notifications(panel_db, _at(due))
    second = send_recycle_bin_notifications(panel_db, _at(due + timedelta(minutes=5)))
    assert (first["notices"], first["emails_queued"], second["notices"]) == (1, 1, 0)
    mails = sql("SELECT dedupe_key, to_address FROM email_outbox WHERE dedupe_key LIKE 'recycle-bin:%%'")
    assert mails == [("recycle-bin:1:0", "it@contoso.example")]


def test_a_mailbox_of_an_organisation_without_a_customer_has_no_recycle_bin_item(exchange, recorded_powershell,
                                                                                 panel_db, sql):
    from panelflow.steps.exchange.jobs import process_exchange_group_actions

    sql("UPDATE exchange_organizations SET customer_id = NULL")
    mailbox = sql("INSERT INTO exchange_mailboxes (organization_id, exchange_server_id, alias, display_name,"
                  " primary_smtp_address, status, exchange_guid) VALUES"
                  " (1, 1, 'svc', 'Service', 'svc@contoso.example', 'active', %s) RETURNING id", (GUID,))[0][0]
    recorded_powershell.answer("exchange/remove_mailbox", [{"Identity": GUID, "ExchangeGuid": GUID, "Database": "DB01",
                                                             "Removed": True, "AlreadyAbsent": False}])
    sql("INSERT INTO group_action_jobs (backend, action, payload) VALUES ('exchange', 'delete_mailbox', %s)",
        (Jsonb({"mailbox_id": mailbox}),))
    assert process_exchange_group_actions(panel_db, _at(T0), {}, None)["succeeded"] == 1
    assert sql("SELECT status FROM exchange_mailboxes") == [("recycle_bin",)]
    assert sql("SELECT count(*) FROM recycle_bin_items") == [(0,)]


def test_a_mailbox_corrected_into_the_bin_gets_one_item_and_notice_and_the_purge_removes_it(
        exchange, recorded_powershell, panel_db, sql):
    from panelflow.steps.exchange.jobs import correct_mailbox_statuses
    from panelflow.steps.exchange.recycle_bin import purge_recycle_bin_mailboxes
    from panelflow.steps.recycle_bin import send_recycle_bin_notifications

    # the delete job finished, but its worker died before the mailbox's status was set: step 5 settles it
    mailbox = sql("INSERT INTO exchange_mailboxes (organization_id, exchange_server_id, alias, display_name,"
                  " primary_smtp_address, status, previous_status, exchange_guid, database) VALUES"
                  " (1, 1, 'eve.evans', 'Eve Evans', 'eve.evans@contoso.example', 'pending', 'active', %s, 'DB01')"
                  " RETURNING id", (GUID,))[0][0]
    finished = T0 - timedelta(minutes=3)
    sql("INSERT INTO group_action_jobs (backend, action, payload, status, finished_at, attempts)"
        " VALUES ('exchange', 'delete_mailbox', %s, 'succeeded', %s, 1)", (Jsonb({"mailbox_id": mailbox}), finished))

    assert correct_mailbox_statuses(panel_db, _at(T0), None)["to_recycle_bin"] == 1
    assert correct_mailbox_statuses(panel_db, _at(T0 + timedelta(minutes=5)), None)["corrected"] == 0
    assert sql("SELECT customer_id, kind, name, deleted_at, purge_at, exchange_mailbox_id FROM recycle_bin_items") == [
        (exchange, "mailbox", "eve.evans@contoso.example", finished, finished + timedelta(days=30), mailbox)]

    due = T0 + timedelta(days=23, hours=1)
    first = send_recycle_bin_notifications(panel_db, _at(due))
    second = send_recycle_bin_notifications(panel_db, _at(due + timedelta(minutes=5)))
    assert (first["notices"], second["notices"]) == (1, 0)
    assert sql("SELECT to_address FROM email_outbox WHERE dedupe_key LIKE 'recycle-bin:%%'") == [("it@contoso.example",)]

    # GroupActionWorkEx 7, 30 days on: purged from its database, and out of the customer's bin
    recorded_powershell.answer("exchange/get_recycle_bin_mailboxes", [
        {"DisplayName": "Eve Evans", "MailboxGuid": GUID, "Database": "DB01", "DisconnectReason": "Disabled"}])
    recorded_powershell.answer("exchange/remove_store_mailbox", [
        {"MailboxGuid": GUID, "Database": "DB01", "MailboxState": "Disabled", "Purged": True}])
    purge = purge_recycle_bin_mailboxes(panel_db, _at(T0 + timedelta(days=30, hours=1)), {}, None)
    assert (purge["purged"], purge["failed"]) == (1, 0)
    assert sql("SELECT status FROM exchange_mailboxes") == [("deleted",)]
    assert sql("SELECT count(*) FROM recycle_bin_items") == [(0,)]
    assert sql("SELECT count(*) FROM recycle_bin_notices") == [(0,)]


# -- O365 price lists from Partner Center's price sheets (BillingWork 5 imports, then notifies; 19 names) ---------

@pytest.fixture
def pricing(panel_db, sql, monkeypatch):
    """The Microsoft sandbox with partner ``partner-a`` (connection ``pc_a``, the pricing API on the same host),
    a GB CSP profile, and customer Alpha Ltd on Microsoft 365 Business Basic (offer CFQ7TTC0LF8R:0001)."""
    import json
    from datetime import date

    from sandbox import microsoft
    from sandbox import partner_center as sandbox

    from panelflow.dev.postgres import free_port

    sql("TRUNCATE csp_profiles, o365_price_sheets, o365_price_lists, o365_price_notifications RESTART IDENTITY CASCADE")
    issuer = microsoft.TokenIssuer()
    api = sandbox.PartnerCenterApi(issuer, today=date(2026, 11, 20))
    issuer.register("partner-a", "panelflow-tests", "pc-secret")
    api.add_partner("partner-a")
    server = microsoft.MicrosoftSandbox([issuer, api], port=free_port()).start()

    def connection(secret="pc-secret"):
        return json.dumps({"conn_type": "panelflow_partner_center", "host": "127.0.0.1", "port": server.port,
                           "schema": "http", "login": "panelflow-tests", "password": secret,
                           "extra": {"tenant_id": "partner-a", "authority": server.url,
                                     "timeout": 5, "retries": 2, "backoff": 0.01, "max_retry_wait": 0.1}})

    monkeypatch.setenv("AIRFLOW_CONN_PC_A", connection())
    api.connection = connection
    sql("INSERT INTO csp_profiles (name, conn_id, country) VALUES ('CSP A', 'pc_a', 'GB')")
    sql("INSERT INTO currencies VALUES ('GBP', 'Pound sterling', 2)")
    sql("INSERT INTO providers (name, billing_email, currency) VALUES ('Host Ltd', 'billing@host.example', 'GBP')")
    alpha = sql("INSERT INTO customers (provider_id, name, email, country, currency)"
                " VALUES (1, 'Alpha Ltd', 'it@alpha.example', 'GB', 'GBP') RETURNING id")[0][0]
    sql("INSERT INTO subscriptions (customer_id, plan, price, currency, billing_cycle, next_bill_date, started_on,"
        " status, o365_offer_id) VALUES (%s, '', 5, 'GBP', 'monthly', '2026-12-01', '2026-01-01', 'active',"
        " 'CFQ7TTC0LF8R:0001')", (alpha,))
    yield api
    server.stop()


def test_price_sheets_fill_the_o365_price_lists_once_per_version_and_billingwork_announces_the_change(
        pricing, panel_db, sql):
    from datetime import date

    import pendulum

    from panelflow.steps.o365_prices import o365_price_update_notifications
    from panelflow.steps.provisioning import fill_blank_o365_subscription_names

    tz = "Europe/London"
    nov20 = Interval(pendulum.datetime(2026, 11, 20, 1, 30, tz=tz), pendulum.datetime(2026, 11, 21, 1, 30, tz=tz), tz)
    basic = ("CFQ7TTC0LF8R", "0001", "Microsoft 365 Business Basic")
    pricing.add_price_sheet_row("GB", *basic, "GBP", "4.90", date(2026, 11, 1))                 # current
    pricing.add_price_sheet_row("GB", *basic, "GBP", "5.40", date(2026, 12, 1))                 # future: a rise
    pricing.add_price_sheet_row("GB", *basic, "GBP", "58.80", date(2026, 11, 1), term="P1Y",    # annual: not kept
                                billing_plan="Annual")
    pricing.add_price_sheet_row("GB", "CFQ7TTC0LH18", "0001", "Exchange Online (Plan 1)", "GBP", "", date(2026, 11, 1))

    first = o365_price_update_notifications(panel_db, nov20, {}, None)

    assert (first["price_sheets_read"], first["prices_added"], first["price_sheets_unchanged"]) == (2, 2, 0)
    assert first["skipped"] == {"price sheet row unusable": 1}
    assert first["skipped_examples"] == ["GB updatedlicensebased current line 4: ERP Price '' is not a number: "
                                         "price sheet row unusable"]
    assert sql("SELECT offer_id, offer_name, currency, unit_price::text, effective_from, published_on"
               " FROM o365_price_lists ORDER BY effective_from") == [
        ("CFQ7TTC0LF8R:0001", "Microsoft 365 Business Basic", "GBP", "4.9000", date(2026, 11, 1), date(2026, 11, 20)),
        ("CFQ7TTC0LF8R:0001", "Microsoft 365 Business Basic", "GBP", "5.4000", date(2026, 12, 1), date(2026, 11, 20))]
    assert first["notifications"] == 1 and first["emails_queued"] == 1
    changes = sql("SELECT changes FROM o365_price_notifications")[0][0]
    assert [(c["offer_id"], c["old_price"], c["new_price"]) for c in changes] == [("CFQ7TTC0LF8R:0001", 4.9, 5.4)]
    paths = [r["path"] for r in pricing.requests if r["api"] == "price_sheets"]
    assert paths == ["/v1.0/sales/pricesheets(Market='GB',PricesheetView='updatedlicensebased')/$value"] * 2
    assert [r["query"]["timeline"] for r in pricing.requests if r["api"] == "price_sheets"] == [["current"], ["future"]]

    again = o365_price_update_notifications(panel_db, nov20, {}, None)     # the same sheets: nothing new
    assert (again["price_sheets_unchanged"], again["prices_added"], again["notifications"]) == (2, 0, 0)
    assert sql("SELECT count(*) FROM o365_price_sheets") == [(2,)]

    # ProvisioningWork 19 names the blank subscription from what the sheet brought
    assert fill_blank_o365_subscription_names(panel_db, nov20)["names_filled"] == 1
    assert sql("SELECT plan FROM subscriptions") == [("Microsoft 365 Business Basic",)]


def test_the_pricing_api_is_microsofts_own_host_unless_the_connection_names_another(monkeypatch):
    import json

    from panelflow.hooks.partner_center import PartnerCenterHook

    real = {"conn_type": "panelflow_partner_center", "host": "api.partnercenter.microsoft.com", "schema": "https",
            "login": "app", "password": "secret", "extra": {"tenant_id": "partner"}}
    monkeypatch.setenv("AIRFLOW_CONN_PC_REAL", json.dumps(real))
    monkeypatch.setenv("AIRFLOW_CONN_PC_PROXY", json.dumps({**real, "extra": {
        "tenant_id": "partner", "pricing_url": "https://pricing.proxy.example/"}}))
    hooks = [PartnerCenterHook("pc_real"), PartnerCenterHook("pc_proxy")]
    try:
        for hook in hooks:
            hook.get_conn()
        assert [h._pricing_url() for h in hooks] == ["https://api.partner.microsoft.com", "https://pricing.proxy.example"]
    finally:
        for hook in hooks:
            hook.close()


def test_an_unreachable_partner_center_fails_the_step_after_the_notices(pricing, panel_db, sql, monkeypatch):
    import pendulum

    from panelflow.steps.o365_prices import PriceSheetsUnreachable, o365_price_update_notifications

    monkeypatch.setenv("AIRFLOW_CONN_PC_A", pricing.connection(secret="wrong"))
    sql("INSERT INTO o365_price_lists (offer_id, offer_name, currency, unit_price, effective_from, published_on)"
        " VALUES ('CFQ7TTC0LF8R:0001', 'Basic', 'GBP', 4.90, '2026-11-01', '2026-10-01'),"
        " ('CFQ7TTC0LF8R:0001', 'Basic', 'GBP', 5.40, '2026-12-01', '2026-11-20')")
    tz = "Europe/London"
    nov20 = Interval(pendulum.datetime(2026, 11, 20, 1, 30, tz=tz), pendulum.datetime(2026, 11, 21, 1, 30, tz=tz), tz)
    with pytest.raises(PriceSheetsUnreachable, match="GB"):
        o365_price_update_notifications(panel_db, nov20, {}, None)
    assert sql("SELECT count(*) FROM o365_price_notifications") == [(1,)]      # what was stored is announced


# -- UsageReportWork 2: the add-on usage report, once per month ----------------------------------------------------

def test_the_addon_usage_report_is_taken_once_per_month_from_the_panels_add_ons(panel_db, sql):
    from datetime import date

    import pendulum

    from panelflow.steps.addon_usage import addon_usage_report

    sql("INSERT INTO currencies VALUES ('GBP', 'Pound sterling', 2), ('EUR', 'Euro', 2)")
    sql("INSERT INTO providers (name, billing_email, currency) VALUES ('Host Ltd', 'billing@host.example', 'GBP')")
    reseller = sql("INSERT INTO resellers (provider_id, name, email) VALUES (1, 'Resell Ltd', 'r@resell.example')"
                   " RETURNING id")[0][0]

    def customer(name, reseller_id=None, status="active"):
        return sql("INSERT INTO customers (provider_id, reseller_id, name, email, country, currency, status)"
                   " VALUES (1, %s, %s, 'x@example.com', 'GB', 'GBP', %s) RETURNING id",
                   (reseller_id, name, status))[0][0]

    def subscription(cust, status="active", started="2026-01-01", currency="GBP"):
        return sql("INSERT INTO subscriptions (customer_id, plan, price, currency, billing_cycle, next_bill_date,"
                   " started_on, status) VALUES (%s, 'Hosting', 10, %s, 'monthly', '2026-12-01', %s, %s) RETURNING id",
                   (cust, currency, started, status))[0][0]

    def addon(sub, name, price, quantity, status="active"):
        return sql("INSERT INTO subscription_addons (subscription_id, name, price, quantity, status)"
                   " VALUES (%s, %s, %s, %s, %s) RETURNING id", (sub, name, price, quantity, status))[0][0]

    alpha, beta, closed = customer("Alpha"), customer("Beta", reseller), customer("Closed", status="closed")
    a1, a2 = subscription(alpha), subscription(alpha)
    addon(a1, "Backup", "2.50", 3)
    addon(a2, " Backup ", "2.50", 2)                    # same add-on, another subscription: one line
    addon(a1, "Backup", "2.00", 1)                      # another price: its own line
    addon(a1, "SSL", "5.00", 1, status="cancelled")     # cancelled (or merged into another): not counted
    addon(subscription(alpha, status="cancelled"), "Backup", "2.50", 9)
    addon(subscription(alpha, started="2026-12-01"), "Backup", "2.50", 4)   # starts after the month
    addon(subscription(beta, currency="EUR"), "Extra IP", "3.00", 2)
    addon(subscription(closed), "Backup", "2.50", 1)

    tz = "Europe/London"
    end = pendulum.datetime(2026, 12, 1, 3, 20, tz=tz)
    run = Interval(end.subtract(hours=12), end, tz)
    first = addon_usage_report(panel_db, run)
    assert (first["period"], first["reports_taken"], first["lines"], first["customers"]) == ("2026-11-01", 1, 3, 2)
    assert sql("SELECT period_start, period_end, taken_at, line_count FROM addon_usage_reports") == [
        (date(2026, 11, 1), date(2026, 12, 1), run.end, 3)]
    assert sql("SELECT customer_id, reseller_id, addon_name, currency, unit_price::text, subscriptions, quantity,"
               " amount::text FROM addon_usage_report_lines ORDER BY customer_id, unit_price") == [
        (alpha, None, "Backup", "GBP", "2.00", 1, 1, "2.00"),
        (alpha, None, "Backup", "GBP", "2.50", 2, 5, "12.50"),
        (beta, reseller, "Extra IP", "EUR", "3.00", 1, 2, "6.00")]

    # the month's later runs, a retry or a backfill: the report stays as taken
    addon(a1, "Backup", "2.50", 7)
    later = addon_usage_report(panel_db, Interval(run.end, run.end.add(hours=12), tz))
    assert (later["already_taken"], later["lines"]) == (1, 0)
    assert sql("SELECT sum(quantity) FROM addon_usage_report_lines") == [(8,)]
    # the next month's first run takes the next report (January's first run reports December)
    january = Interval(run.end, pendulum.datetime(2027, 1, 1, 3, 20, tz=tz), tz)
    assert addon_usage_report(panel_db, january)["period"] == "2026-12-01"


# -- 0038 keeps what the tables held --------------------------------------------------------------------------------

def test_0038_keeps_converted_trials_and_puts_mailboxes_already_in_the_bin_into_it(postgres):
    import psycopg

    from panelflow.db import downgrade, upgrade

    postgres.create_database("panel_0038")
    url = postgres.uri("panel_0038")
    upgrade(url, "0037")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO currencies VALUES ('GBP', 'Pound sterling', 2)")
        conn.execute("INSERT INTO providers (name, billing_email, currency) VALUES ('H', 'b@h.example', 'GBP')")
        conn.execute("INSERT INTO customers (provider_id, name, email, country, currency)"
                     " VALUES (1, 'C', 'c@c.example', 'GB', 'GBP')")
        conn.execute("INSERT INTO subscriptions (customer_id, plan, price, currency, billing_cycle, next_bill_date,"
                     " started_on) VALUES (1, 'a', 1, 'GBP', 'monthly', '2026-12-01', '2026-01-01'),"
                     " (1, 'b', 1, 'GBP', 'monthly', '2026-12-01', '2026-01-01')")
        conn.execute("INSERT INTO csp_trials (subscription_id, trial_ends_at, converted_at) VALUES"
                     " (1, %s, %s), (2, %s, NULL)", (T0, T0 - timedelta(days=1), T0))
        conn.execute("INSERT INTO exchange_servers (name, fqdn, conn_id, roles) VALUES ('EX01', 'ex01.test', 'exch_ex01',"
                     " '{Mailbox}')")
        conn.execute("INSERT INTO exchange_organizations (customer_id, exchange_server_id, name, organizational_unit)"
                     " VALUES (1, 1, 'C', 'OU=C')")
        conn.execute("INSERT INTO exchange_mailboxes (organization_id, exchange_server_id, alias, display_name,"
                     " primary_smtp_address, status, deleted_at) VALUES (1, 1, 'a', 'A', 'a@c.example', 'recycle_bin', %s),"
                     " (1, 1, 'b', 'B', 'b@c.example', 'active', NULL)", (T0,))
    upgrade(url, "0038")
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT subscription_id, handled_at, outcome FROM csp_trials ORDER BY 1").fetchall() == [
            (1, T0 - timedelta(days=1), "converted"), (2, None, None)]
        assert conn.execute("SELECT customer_id, kind, name, deleted_at, purge_at, exchange_mailbox_id"
                            " FROM recycle_bin_items").fetchall() == [
            (1, "mailbox", "a@c.example", T0, T0 + timedelta(days=30), 1)]
    downgrade(url, "0037")
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT subscription_id, converted_at, handled_at FROM csp_trials ORDER BY 1").fetchall() == [
            (1, T0 - timedelta(days=1), None), (2, None, None)]
