"""BillingWork's O365 price update notifications on the real panel DB (notices and outbox e-mails)."""

from __future__ import annotations

from datetime import date

import pendulum
import pytest

from panelflow.step import Interval
from panelflow.steps.o365_prices import o365_price_update_notifications

TZ = "Europe/London"
NOV20 = Interval(pendulum.datetime(2026, 11, 20, 1, 30, tz=TZ), pendulum.datetime(2026, 11, 21, 1, 30, tz=TZ), TZ)
NOV19 = Interval(pendulum.datetime(2026, 11, 19, 1, 30, tz=TZ), pendulum.datetime(2026, 11, 20, 1, 30, tz=TZ), TZ)


def one(sql, query, params=None):
    return sql(query, params)[0][0]


def price(sql, offer, name, currency, unit_price, effective_from, published_on):
    sql("INSERT INTO o365_price_lists (offer_id, offer_name, currency, unit_price, effective_from, published_on)"
        " VALUES (%s, %s, %s, %s, %s, %s)", (offer, name, currency, unit_price, effective_from, published_on))


@pytest.fixture
def world(panel_db, sql):
    sql("TRUNCATE csp_profiles RESTART IDENTITY CASCADE")   # no CSP profile: no price sheet to import here
    sql("INSERT INTO currencies (code, name) VALUES ('GBP', 'Pound sterling'), ('EUR', 'Euro')")
    provider = one(sql, "INSERT INTO providers (name, billing_email, currency)"
                        " VALUES ('Host Ltd', 'billing@host.example', 'GBP') RETURNING id")

    def customer(name, email, currency="GBP"):
        return one(sql, "INSERT INTO customers (provider_id, name, email, country, currency)"
                        " VALUES (%s, %s, %s, 'GB', %s) RETURNING id", (provider, name, email, currency))

    def subscribe(customer_id, offer, currency="GBP", status="active"):
        sql("INSERT INTO subscriptions (customer_id, plan, price, currency, billing_cycle, next_bill_date,"
            " started_on, status, o365_offer_id) VALUES (%s, 'o365', 10, %s, 'monthly', '2026-12-01', '2026-01-01',"
            " %s, %s)", (customer_id, currency, status, offer))

    c = {"alpha": customer("Alpha Ltd", "it@alpha.example"), "beta": customer("Beta Ltd", "it@beta.example"),
         "euro": customer("Euro GmbH", "it@euro.example", "EUR"), "gone": customer("Gone Ltd", "it@gone.example"),
         "nomail": customer("No Mail Ltd", None)}
    for offer in ("E3", "E3", "E1", "BP", "NEW"):  # two E3 subscriptions: still one line for E3
        subscribe(c["alpha"], offer)
    subscribe(c["beta"], "E1")
    subscribe(c["beta"], "E5")
    subscribe(c["euro"], "E3", "EUR")
    subscribe(c["gone"], "E3", status="cancelled")
    subscribe(c["nomail"], "E3")

    # earlier lists
    price(sql, "E3", "Office 365 E3", "GBP", "20.00", "2026-01-01", "2025-12-01")
    price(sql, "E3", "Office 365 E3", "GBP", "19.00", "2025-01-01", "2024-12-01")  # older still: not "previous"
    price(sql, "E1", "Office 365 E1", "GBP", "8.00", "2026-01-01", "2025-12-01")
    price(sql, "BP", "Business Premium", "GBP", "10.00", "2026-01-01", "2025-12-01")
    price(sql, "E3", "Office 365 E3", "EUR", "23.00", "2026-01-01", "2025-12-01")
    price(sql, "E5", "Office 365 E5", "GBP", "0.0400", "2026-01-01", "2025-12-01")
    # the list published on 20 November: E3 up, E1 down, BP and E3/EUR unchanged, NEW's first price ever
    price(sql, "E3", "Office 365 E3", "GBP", "22.00", "2026-12-01", "2026-11-20")
    price(sql, "E1", "Office 365 E1", "GBP", "7.50", "2026-12-01", "2026-11-20")
    price(sql, "BP", "Business Premium", "GBP", "10.00", "2026-12-01", "2026-11-20")
    price(sql, "E3", "Office 365 E3", "EUR", "23.00", "2026-12-01", "2026-11-20")
    price(sql, "NEW", "Copilot", "GBP", "25.00", "2026-12-01", "2026-11-20")
    # the list published the day before: E5 up by a fraction of a penny
    price(sql, "E5", "Office 365 E5", "GBP", "0.0425", "2026-12-01", "2026-11-19")
    return c


def test_one_notice_and_email_per_affected_customer(world, panel_db, sql):
    c = world
    summary = o365_price_update_notifications(panel_db=panel_db, interval=NOV20)

    assert summary["price_rows_published"] == 5
    assert summary["notifications"] == 2 and summary["emails_queued"] == 2
    assert summary["skipped"] == {"customer has no usable e-mail address": 1}
    assert summary["skipped_examples"] == [
        f"customer {c['nomail']} (no address), price list of 2026-11-20: customer has no usable e-mail address"]

    notices = {r[0]: r[1:] for r in sql(
        "SELECT customer_id, published_on, changes, outbox_key FROM o365_price_notifications")}
    assert set(notices) == {c["alpha"], c["beta"]}  # not euro (unchanged in EUR), gone (cancelled), nomail
    published_on, changes, key = notices[c["alpha"]]
    assert published_on == date(2026, 11, 20) and key == f"o365-price:{c['alpha']}:2026-11-20"
    assert changes == [
        {"offer_id": "E1", "offer_name": "Office 365 E1", "currency": "GBP", "effective_from": "2026-12-01",
         "old_price": 8.0, "new_price": 7.5, "direction": "decrease"},
        {"offer_id": "E3", "offer_name": "Office 365 E3", "currency": "GBP", "effective_from": "2026-12-01",
         "old_price": 20.0, "new_price": 22.0, "direction": "increase"}]
    assert [ch["offer_id"] for ch in notices[c["beta"]][1]] == ["E1"]  # E5 changed on another day

    mails = {r[0]: r[1:] for r in sql(
        "SELECT to_address, dedupe_key, template, subject, body_text, body_html, not_before FROM email_outbox")}
    assert set(mails) == {"it@alpha.example", "it@beta.example"}
    dedupe_key, template, subject, text, html, not_before = mails["it@alpha.example"]
    assert dedupe_key == key and template == "o365_price_update" and not_before == NOV20.end
    assert subject == "Microsoft 365 price changes for your subscriptions (price list of 2026-11-20)"
    assert "Office 365 E1: 8.00 → 7.50 GBP" in text and "Office 365 E3: 20.00 → 22.00 GBP" in text
    assert "Business Premium" not in text and "Copilot" not in text
    assert "Hello Alpha Ltd" in text and "22.00 GBP" in html


def test_rerun_adds_nothing(world, panel_db, sql):
    o365_price_update_notifications(panel_db=panel_db, interval=NOV20)
    before = (sql("SELECT * FROM o365_price_notifications ORDER BY id"), sql("SELECT * FROM email_outbox ORDER BY id"))

    again = o365_price_update_notifications(panel_db=panel_db, interval=NOV20)

    assert again["notifications"] == again["emails_queued"] == 0 and again["already_notified"] == 2
    assert (sql("SELECT * FROM o365_price_notifications ORDER BY id"), sql("SELECT * FROM email_outbox ORDER BY id")) \
        == before


def test_customer_without_email_is_notified_once_fixed(world, panel_db, sql):
    o365_price_update_notifications(panel_db=panel_db, interval=NOV20)
    sql("UPDATE customers SET email = 'it@nomail.example' WHERE id = %s", (world["nomail"],))

    again = o365_price_update_notifications(panel_db=panel_db, interval=NOV20)

    assert again["skipped"] == {} and again["notifications"] == 1 and again["emails_queued"] == 1
    assert sql("SELECT to_address FROM email_outbox WHERE dedupe_key = %s",
               (f"o365-price:{world['nomail']}:2026-11-20",)) == [("it@nomail.example",)]


def test_backfill_of_another_day_and_exact_prices(world, panel_db, sql):
    summary = o365_price_update_notifications(panel_db=panel_db, interval=NOV19)

    assert summary["price_rows_published"] == 1 and summary["notifications"] == 1 and summary["skipped"] == {}
    assert sql("SELECT customer_id, published_on FROM o365_price_notifications") == [
        (world["beta"], date(2026, 11, 19))]
    (text,) = sql("SELECT body_text FROM email_outbox")[0]
    assert "Office 365 E5: 0.04 → 0.0425 GBP" in text
    # the 20 November run afterwards: its own notices, beta gets a second one for the other list
    o365_price_update_notifications(panel_db=panel_db, interval=NOV20)
    assert one(sql, "SELECT count(*) FROM o365_price_notifications WHERE customer_id = %s", (world["beta"],)) == 2


def test_no_changes_no_notices(world, panel_db, sql):
    quiet = Interval(pendulum.datetime(2026, 11, 21, 1, 30, tz=TZ), pendulum.datetime(2026, 11, 22, 1, 30, tz=TZ), TZ)
    price(sql, "BP", "Business Premium", "GBP", "10.00", "2027-01-01", "2026-11-21")  # same price again

    summary = o365_price_update_notifications(panel_db=panel_db, interval=quiet)

    assert summary["price_rows_published"] == 1 and summary["notifications"] == 0 and summary["notices_due"] == 0
    assert one(sql, "SELECT count(*) FROM email_outbox") == 0
