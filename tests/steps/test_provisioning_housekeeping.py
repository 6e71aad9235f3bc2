"""ProvisioningWork's panel-database housekeeping steps on the real panel DB: hand-checked cases
per step, reruns that change nothing, bad records reported and skipped while the rest is
processed, bounds honoured, e-mails queued once."""

from __future__ import annotations

import hashlib
import logging
from datetime import date, timedelta
from decimal import Decimal as D

import pendulum
import psycopg
import pytest

from panelflow.step import Interval
from panelflow.steps import failure_notices, passwords, recycle_bin
from panelflow.steps import provisioning as prov

END = pendulum.datetime(2026, 11, 20, 3, 0, tz="UTC")
AT = Interval(END.subtract(minutes=10), END, "Europe/London")
LOG = logging.getLogger("test")

OWN_TABLES = (
    "customer_contacts", "credentials", "subscription_credit_limits", "csp_trials", "recycle_bin_items",
    "recycle_bin_notices", "recovery_distribution_lists", "recovery_notices", "failure_notices",
    "failure_notice_entries", "registrar_accounts", "registrar_domains", "registrar_domain_contacts",
    "csp_profiles", "csp_customers", "o365_subscriptions",
)


def at(**delta) -> Interval:
    end = END.add(**delta)
    return Interval(end.subtract(minutes=10), end, "Europe/London")


@pytest.fixture
def db(panel_db, sql):
    sql("TRUNCATE " + ", ".join(OWN_TABLES) + " RESTART IDENTITY CASCADE")
    sql("INSERT INTO currencies VALUES ('GBP', 'Pound sterling', 2), ('EUR', 'Euro', 2)")
    sql("INSERT INTO providers (name, billing_email, currency) VALUES ('Test Hosting', 'billing@test.example', 'GBP')")
    return panel_db


def customer(sql, name, email="x@test.example", *, status="active", currency="GBP", **cols) -> int:
    names = ", ".join(["provider_id", "name", "email", "country", "currency", "status", *cols])
    marks = ", ".join(["%s"] * (6 + len(cols)))
    return sql(f"INSERT INTO customers ({names}) VALUES ({marks}) RETURNING id",
               (1, name, email, "GB", currency, status, *cols.values()))[0][0]


def subscription(sql, cust, *, plan="Web Hosting", status="active", currency="GBP", offer=None, price="10.00") -> int:
    return sql("INSERT INTO subscriptions (customer_id, plan, price, currency, billing_cycle, next_bill_date, status,"
               " o365_offer_id, started_on) VALUES (%s, %s, %s, %s, 'monthly', '2026-12-01', %s, %s, '2026-11-01')"
               " RETURNING id", (cust, plan, price, currency, status, offer))[0][0]


def outbox(sql, like="%"):
    return sql("SELECT dedupe_key, to_address, subject, body_text FROM email_outbox WHERE dedupe_key LIKE %s"
               " ORDER BY dedupe_key", (like,))


# --- 9 ---------------------------------------------------------------------------------------------

def test_primary_contact_carries_the_customers_address(db, sql):
    a = customer(sql, "Changed address", "new@a.example")
    a_primary = sql("INSERT INTO customer_contacts (customer_id, name, email, is_primary) VALUES"
                    " (%s, 'Ann', 'old@a.example', true), (%s, 'Bob', 'bob@a.example', false) RETURNING id",
                    (a, a))[0][0]
    b = customer(sql, "No primary yet", "b@b.example")
    b_contacts = [r[0] for r in sql(
        "INSERT INTO customer_contacts (customer_id, name, email) VALUES (%s, 'Other', 'other@b.example'),"
        " (%s, 'Case', ' B@b.example'), (%s, 'Exact', 'b@b.example') RETURNING id", (b, b, b))]
    c = customer(sql, "No address", "")
    sql("INSERT INTO customer_contacts (customer_id, name, email, is_primary) VALUES (%s, 'C', 'c@c.example', true)",
        (c,))
    d = customer(sql, "Nobody matches", "d@d.example")
    sql("INSERT INTO customer_contacts (customer_id, name, email) VALUES (%s, 'D', 'someone@d.example')", (d,))
    e = customer(sql, "Closed", "e@e.example", status="closed")
    sql("INSERT INTO customer_contacts (customer_id, name, email, is_primary) VALUES (%s, 'E', 'old@e.example', true)",
        (e,))
    customer(sql, "No contacts", "f@f.example")

    summary = prov.update_contact_primary_emails(db, AT)

    assert summary["primary_contacts_set"] == 1 and summary["emails_updated"] == 2
    assert sql("SELECT email, email_synced_at FROM customer_contacts WHERE id = %s", (a_primary,)) == [
        ("new@a.example", END)]
    assert sql("SELECT email FROM customer_contacts WHERE customer_id = %s AND NOT is_primary", (a,)) == [
        ("bob@a.example",)]
    # the earliest contact with the customer's address (case and spaces aside) became primary, with its exact address
    assert sql("SELECT id, email FROM customer_contacts WHERE customer_id = %s AND is_primary", (b,)) == [
        (b_contacts[1], "b@b.example")]
    assert sql("SELECT email FROM customer_contacts WHERE customer_id = %s", (e,)) == [("old@e.example",)]
    assert summary["skipped"] == {"customer has no usable e-mail address": 1,
                                  "no primary contact, and no contact with the customer's address": 1}
    assert sorted(summary["skipped_examples"]) == sorted([
        f"customer {c}: customer has no usable e-mail address",
        f"customer {d}: no primary contact, and no contact with the customer's address"])

    again = prov.update_contact_primary_emails(db, at(minutes=10))
    assert again["primary_contacts_set"] == 0 and again["emails_updated"] == 0
    assert sql("SELECT max(email_synced_at) FROM customer_contacts") == [(END,)]


# --- 13 --------------------------------------------------------------------------------------------

def test_domains_take_their_registrar_status(db, sql):
    sql("INSERT INTO registrar_accounts (name, conn_id) VALUES ('alpha', 'registrar_alpha'), ('beta', 'registrar_beta')")
    cust = customer(sql, "Domains")

    def domain(name, **cols):
        names = ", ".join(["customer_id", "name", "contact_email", "verification_token", *cols])
        marks = ", ".join(["%s"] * (4 + len(cols)))
        return sql(f"INSERT INTO domains ({names}) VALUES ({marks}) RETURNING id",
                   (cust, name, "dns@test.example", "tok", *cols.values()))[0][0]

    def reg(account, name, status, *, listed=True, domain_id=None, changed=END.subtract(hours=1), expires=None):
        sql("INSERT INTO registrar_domains (account_id, name, domain_id, status, expires_at, listed, first_seen_at,"
            " changed_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
            (account, name, domain_id, status, expires, listed, END.subtract(days=30), changed))

    expires = pendulum.datetime(2027, 5, 1, tz="UTC")
    d1 = domain("example.test")
    reg(1, "example.test", "ok", expires=expires)
    d2 = domain("Mixed.Example.")                               # matched by name: case and root dot aside
    reg(2, "mixed.example", "clientTransferProhibited")
    d3 = domain("gone.example")                                 # the registrar no longer lists it
    reg(1, "gone.example", "ok", listed=False, domain_id=d3)
    d4 = domain("moving.example")                               # transferred: the listed row wins over the old one
    reg(1, "moving.example", "ok", listed=False, changed=END.subtract(minutes=5))
    reg(2, "moving.example", "pendingTransfer")
    d5 = domain("twice.example")                                # listed by both accounts: which one is it?
    reg(1, "twice.example", "ok")
    reg(2, "twice.example", "ok")
    d6 = domain("nostatus.example")
    reg(1, "nostatus.example", None)
    d7 = domain("stale.example", registrar_account_id=1, registrar_status="ok", registrar_listed=True,
                registrar_status_at=END.subtract(days=3))       # its registrar row went away
    d8 = domain("elsewhere.example")                            # at no registrar of ours

    summary = prov.update_registrar_status(db, AT)

    rows = {r[0]: r[1:] for r in sql("SELECT id, registrar_account_id, registrar_status, registrar_expires_at,"
                                     " registrar_listed, registrar_status_at FROM domains")}
    assert rows[d1] == (1, "ok", expires, True, END)
    assert rows[d2] == (2, "clientTransferProhibited", None, True, END)
    assert rows[d3] == (1, "ok", None, False, END)
    assert rows[d4] == (2, "pendingTransfer", None, True, END)
    assert rows[d5] == rows[d6] == rows[d8] == (None, None, None, None, None)
    assert rows[d7] == (None, None, None, None, END)
    assert summary["domains_updated"] == 4 and summary["domains_cleared"] == 1 and summary["domains_unlisted"] == 1
    assert summary["skipped"] == {"listed by more than one registrar account": 1, "the registrar gave no status": 1}
    assert "twice.example (accounts alpha, beta): listed by more than one registrar account" in summary["skipped_examples"]

    # a rerun changes nothing; a status change at the registrar moves only that domain
    again = prov.update_registrar_status(db, at(minutes=10))
    assert again["domains_updated"] == 0 and again["domains_cleared"] == 0
    sql("UPDATE registrar_domains SET status = 'redemptionPeriod' WHERE name = 'example.test'")
    later = prov.update_registrar_status(db, at(minutes=20))
    assert later["domains_updated"] == 1
    assert sql("SELECT registrar_status, registrar_status_at FROM domains WHERE id = %s", (d1,)) == [
        ("redemptionPeriod", END.add(minutes=20))]
    assert sql("SELECT registrar_status_at FROM domains WHERE id = %s", (d2,)) == [(END,)]


# --- 19 --------------------------------------------------------------------------------------------

def test_blank_o365_subscription_names_from_the_price_list(db, sql, migrated_panel_db):
    sql("""INSERT INTO o365_price_lists (offer_id, offer_name, currency, unit_price, effective_from, published_on) VALUES
        ('BB', 'Business Basic (2025 name)', 'GBP', 4.50, '2025-01-01', '2024-12-01'),
        ('BB', 'Microsoft 365 Business Basic', 'GBP', 4.90, '2026-10-01', '2026-09-01'),
        ('BB', 'Microsoft 365 Business Basic (2027)', 'GBP', 5.10, '2026-12-01', '2026-11-01'),
        ('BB', 'M365 Business Basic (EUR)', 'EUR', 5.60, '2026-10-01', '2026-09-01'),
        ('TEAMS', 'Teams Essentials', 'GBP', 3.00, '2027-01-01', '2026-11-10'),
        ('LATE', 'Published after the run', 'GBP', 1.00, '2026-12-01', '2026-11-25'),
        ('BLANK', '  ', 'GBP', 1.00, '2026-01-01', '2025-12-01')""")
    cust = customer(sql, "O365")
    gbp = subscription(sql, cust, plan="", offer="BB")
    eur = subscription(sql, cust, plan="   ", offer="BB", currency="EUR")
    future_only = subscription(sql, cust, plan="", offer="TEAMS")
    unknown = subscription(sql, cust, plan="", offer="NOPE")
    late = subscription(sql, cust, plan="", offer="LATE")
    blank_name = subscription(sql, cust, plan="", offer="BLANK")
    named = subscription(sql, cust, plan="My own name", offer="BB")
    not_o365 = subscription(sql, cust, plan="")
    locked = subscription(sql, cust, plan="", offer="BB")

    with psycopg.connect(migrated_panel_db) as other:  # BillingWork holding a row: not waited for
        other.execute("SELECT 1 FROM subscriptions WHERE id = %s FOR UPDATE", (locked,))
        summary = prov.fill_blank_o365_subscription_names(db, AT)
    plans = dict(sql("SELECT id, plan FROM subscriptions"))
    assert plans[gbp] == "Microsoft 365 Business Basic"          # effective on 20 Nov, not the 2027 one
    assert plans[eur] == "M365 Business Basic (EUR)"              # its own currency first
    assert plans[future_only] == "Teams Essentials"               # only a future price: its name all the same
    assert plans[unknown] == plans[late] == plans[blank_name] == ""
    assert plans[eur] and plans[named] == "My own name" and plans[not_o365] == "" and plans[locked] == ""
    assert summary["names_filled"] == 3 and summary["deferred_locked"] == 1 and summary["blank_names"] == 7
    assert summary["skipped"] == {"offer not in the O365 price list": 3}
    assert f"subscription {unknown} (offer NOPE): offer not in the O365 price list" in summary["skipped_examples"]

    again = prov.fill_blank_o365_subscription_names(db, at(minutes=10))
    assert again["names_filled"] == 1 and again["deferred_locked"] == 0
    assert sql("SELECT plan FROM subscriptions WHERE id = %s", (locked,)) == [("Microsoft 365 Business Basic",)]
    assert prov.fill_blank_o365_subscription_names(db, at(minutes=20))["names_filled"] == 0


# --- 24 --------------------------------------------------------------------------------------------

def _csp_trials(sql, trials) -> None:
    """The reconciliation's rows: each panel subscription linked to a Partner Center subscription, a trial
    (``is_trial``) ending on the given day unless ``trial`` is false (converted to a paid offer)."""
    profile = sql("INSERT INTO csp_profiles (name, conn_id) VALUES ('CSP', 'pc_a') RETURNING id")[0][0]
    tenants: dict[int, int] = {}
    for n, (subscription_id, last_day, trial) in enumerate(trials):
        cust = sql("SELECT customer_id FROM subscriptions WHERE id = %s", (subscription_id,))[0][0]
        if cust not in tenants:
            tenants[cust] = sql("INSERT INTO csp_customers (profile_id, tenant_id, customer_id, first_seen_at)"
                                " VALUES (%s, %s, %s, %s) RETURNING id", (profile, f"tenant-{cust}", cust, END))[0][0]
        sql("INSERT INTO o365_subscriptions (csp_customer_id, subscription_id, panel_subscription_id, offer_id,"
            " quantity, status, is_trial, commitment_end_date, first_seen_at, changed_at)"
            " VALUES (%s, %s, %s, 'OFFER', 1, 'active', %s, %s, %s, %s)",
            (tenants[cust], f"pc-sub-{n}", subscription_id, trial, last_day, END, END))


def test_expired_csp_trials_are_suspended_once(db, sql):
    cust = customer(sql, "Trial Ltd", "it@trial.example")
    no_mail = customer(sql, "No address Ltd", None)
    s_expired = subscription(sql, cust, plan="Microsoft 365 E3 Trial", offer="E3T")
    s_exact = subscription(sql, cust, plan="", offer="E5T")      # blank plan: named by its id in the notice
    s_future = subscription(sql, cust, offer="E3T")
    s_converted = subscription(sql, cust, offer="E3T")
    s_cancelled = subscription(sql, cust, offer="E3T", status="cancelled")
    s_no_mail = subscription(sql, no_mail, plan="Visio Trial", offer="VT")
    today = date(2026, 11, 20)                                   # END is 03:00 UTC on it
    _csp_trials(sql, [(s_expired, today - timedelta(days=1), True), (s_exact, today - timedelta(days=1), True),
                      (s_future, today, True), (s_converted, today - timedelta(days=2), False),
                      (s_cancelled, today - timedelta(days=2), True), (s_no_mail, today - timedelta(days=3), True)])

    summary = prov.suspend_expired_csp_trials(db, AT)

    status = dict(sql("SELECT id, status FROM subscriptions"))
    assert [status[s] for s in (s_expired, s_exact, s_no_mail)] == ["suspended"] * 3
    assert [status[s] for s in (s_future, s_converted)] == ["active"] * 2 and status[s_cancelled] == "cancelled"
    assert summary["suspended"] == 3 and summary["already_inactive"] == 1 and summary["backend_jobs"] == 3
    assert summary["notices_queued"] == 2 and summary["deferred"] == 0
    assert summary["skipped"] == {"suspended without a notice: customer has no usable e-mail address": 1}
    trials = {r[0]: r[1:] for r in sql("SELECT subscription_id, handled_at, outcome, outbox_key,"
                                       " backend_job_id IS NOT NULL, trial_ends_at FROM csp_trials")}
    assert trials[s_expired] == (END, "suspended", f"csp-trial-suspended:{s_expired}", True,
                                 pendulum.datetime(2026, 11, 20, tz="UTC"))
    assert trials[s_no_mail][:4] == (END, "suspended", None, True)
    assert trials[s_cancelled][:4] == (END, "already_inactive", None, False)
    assert s_future not in trials and s_converted not in trials
    jobs = sql("SELECT backend, action, status, payload->>'subscription_id', payload->>'reason' FROM group_action_jobs"
               " ORDER BY (payload->>'subscription_id')::bigint")
    assert jobs == [("o365", "suspend_subscription", "pending", str(s), "csp_trial_expired")
                    for s in sorted((s_expired, s_exact, s_no_mail))]
    mails = outbox(sql, "csp-trial-suspended:%")
    assert [(m[0], m[1]) for m in mails] == [(f"csp-trial-suspended:{s}", "it@trial.example")
                                             for s in sorted((s_expired, s_exact), key=str)]
    by_key = {m[0]: m for m in mails}
    assert by_key[f"csp-trial-suspended:{s_expired}"][2] == "Your trial of Microsoft 365 E3 Trial has ended and is suspended"
    assert f"subscription {s_exact}" in by_key[f"csp-trial-suspended:{s_exact}"][2]
    assert "ended on 2026-11-20" in by_key[f"csp-trial-suspended:{s_expired}"][3]

    # once: staff reactivate a suspended trial, and later runs leave it (and send nothing) …
    sql("UPDATE subscriptions SET status = 'active' WHERE id = %s", (s_expired,))
    again = prov.suspend_expired_csp_trials(db, at(minutes=10))
    assert again["suspended"] == 0 and again["backend_jobs"] == 0
    assert sql("SELECT status FROM subscriptions WHERE id = %s", (s_expired,)) == [("active",)]
    assert sql("SELECT count(*) FROM group_action_jobs") == [(3,)] and len(outbox(sql)) == 2
    # … and the next trial to end is suspended when its last day is over
    assert prov.suspend_expired_csp_trials(db, at(hours=20, minutes=50))["suspended"] == 0
    assert prov.suspend_expired_csp_trials(db, at(hours=21))["suspended"] == 1
    assert sql("SELECT status FROM subscriptions WHERE id = %s", (s_future,)) == [("suspended",)]


def test_a_trial_row_from_before_0038_is_completed_not_duplicated(db, sql):
    cust = customer(sql, "Legacy Ltd", "it@legacy.example")
    sub = subscription(sql, cust, plan="Legacy Trial", offer="LT")
    sql("INSERT INTO csp_trials (subscription_id, trial_ends_at) VALUES (%s, %s)", (sub, END.subtract(days=9)))
    _csp_trials(sql, [(sub, date(2026, 11, 18), True)])
    assert prov.suspend_expired_csp_trials(db, AT)["suspended"] == 1
    assert sql("SELECT handled_at, outcome, trial_ends_at FROM csp_trials") == [
        (END, "suspended", pendulum.datetime(2026, 11, 19, tz="UTC"))]


def test_csp_trials_bounded_per_run(db, sql, monkeypatch):
    monkeypatch.setattr(prov, "MAX_TRIALS_PER_RUN", 2)
    cust = customer(sql, "Many trials", "it@trial.example")
    subs = [subscription(sql, cust, plan=f"Trial {i}", offer="T") for i in range(5)]
    _csp_trials(sql, [(s, date(2026, 11, 10 + i), True) for i, s in enumerate(subs)])
    first = prov.suspend_expired_csp_trials(db, AT)
    assert first["suspended"] == 2 and first["deferred"] == 3
    assert [r[0] for r in sql("SELECT subscription_id FROM csp_trials WHERE handled_at IS NOT NULL ORDER BY 1")] == subs[:2]
    assert prov.suspend_expired_csp_trials(db, at(minutes=10))["suspended"] == 2
    assert prov.suspend_expired_csp_trials(db, at(minutes=20))["deferred"] == 0
    assert sql("SELECT count(*) FROM email_outbox") == [(5,)]


# --- 28 --------------------------------------------------------------------------------------------

def addon(sql, sub, name, price, qty, status="active") -> int:
    return sql("INSERT INTO subscription_addons (subscription_id, name, price, quantity, status)"
               " VALUES (%s, %s, %s, %s, %s) RETURNING id", (sub, name, price, qty, status))[0][0]


def test_duplicate_addons_merge_into_the_oldest(db, sql):
    cust = customer(sql, "Add-ons")
    s1 = subscription(sql, cust)
    a1 = addon(sql, s1, "Archiving", "1.50", 2)
    a2 = addon(sql, s1, " archiving ", "1.50", 3)      # same add-on: name trimmed, case aside
    a3 = addon(sql, s1, "Archiving", "1.50", 1, "cancelled")
    a4 = addon(sql, s1, "Archiving", "2.00", 1)        # another price: another add-on
    a5 = addon(sql, s1, "Backup", "5.00", 1)
    s2 = subscription(sql, cust, status="cancelled")
    c1, c2 = addon(sql, s2, "Backup", "5.00", 1), addon(sql, s2, "Backup", "5.00", 1)
    s3 = subscription(sql, cust, status="suspended")
    t = [addon(sql, s3, "Extra storage", "1.00", 1) for _ in range(3)]
    s4 = subscription(sql, cust)
    big = [addon(sql, s4, "Seats", "0.10", 2_000_000_000) for _ in range(2)]
    billed = "SELECT subscription_id, sum(price * quantity) FROM subscription_addons WHERE status = 'active' GROUP BY 1"
    before = dict(sql(billed))

    summary = prov.merge_addons(db, AT)

    rows = {r[0]: r[1:] for r in sql("SELECT id, quantity, status, merged_into, merged_at FROM subscription_addons")}
    assert rows[a1] == (5, "active", None, None)
    assert rows[a2] == (3, "cancelled", a1, END)
    assert rows[a3] == (1, "cancelled", None, None) and rows[a4] == (1, "active", None, None)
    assert rows[a5] == (1, "active", None, None)
    assert rows[c1][1] == rows[c2][1] == "active"      # a cancelled subscription's add-ons are left alone
    assert rows[t[0]] == (3, "active", None, None)
    assert rows[t[1]] == rows[t[2]] == (1, "cancelled", t[0], END)
    assert [rows[b][:2] for b in big] == [(2_000_000_000, "active")] * 2
    assert summary["addons_kept"] == 2 and summary["addons_merged"] == 3 and summary["subscriptions"] == 3
    assert summary["skipped"] == {"summed quantity out of range": 1}
    assert summary["skipped_examples"] == [
        f'subscription {s4}: 2 add-ons "seats" at 0.10, quantity 4000000000: summed quantity out of range']
    # what billing charges per subscription is unchanged
    assert dict(sql(billed)) == before

    again = prov.merge_addons(db, at(minutes=10))
    assert again["addons_merged"] == 0 and again["addons_kept"] == 0
    assert dict(sql("SELECT id, quantity FROM subscription_addons WHERE status = 'active'"))[a1] == 5


# --- 29 --------------------------------------------------------------------------------------------

OPERATORS = ["noc1@ops.example", "noc2@ops.example"]


def sq_log(sql, order, level, message, when) -> int:
    return sql("INSERT INTO service_queue_logs (order_id, level, message, logged_at) VALUES (%s, %s, %s, %s)"
               " RETURNING id", (order, level, message, when))[0][0]


def job(sql, status, *, finished=None, created=END.subtract(days=1), attempts=1, error=None) -> int:
    return sql("INSERT INTO group_action_jobs (backend, action, status, attempts, error, created_at, finished_at)"
               " VALUES ('exchange', 'create_mailbox', %s, %s, %s, %s, %s) RETURNING id",
               (status, attempts, error, created, finished))[0][0]


def test_failure_notices_once_per_failure(db, sql, monkeypatch):
    monkeypatch.setattr(failure_notices, "_operators", lambda: OPERATORS)
    sq_log(sql, 7, "info", "creating mailbox", END.subtract(minutes=31))
    e1 = sq_log(sql, 7, "error", "mailbox create failed: quota", END.subtract(minutes=30))
    e2 = sq_log(sql, 7, "error", "rollback failed", END.subtract(minutes=29))
    sq_log(sql, 8, "warning", "slow backend", END.subtract(minutes=20))
    sq_log(sql, 9, "error", "too old to tell", END.subtract(days=8))
    e10 = sq_log(sql, 10, "error", "after this run's clock", END.add(minutes=5))
    j1 = job(sql, "failed", finished=END.subtract(hours=1), attempts=2, error="WinRM timeout")
    job(sql, "succeeded", finished=END.subtract(hours=1))
    j3 = job(sql, "failed", created=END.subtract(hours=2))          # failed before it started: no finish time
    job(sql, "failed", finished=END.subtract(days=8))

    summary = failure_notices.send_failure_notifications(db, AT, LOG)

    assert summary["order_failures"] == 1 and summary["job_failures"] == 2 and summary["emails_queued"] == 6
    notices = sql("SELECT source, ref_id, occurrence, recipients, noticed_at FROM failure_notices ORDER BY id")
    assert notices == [("service_queue", 7, e1, OPERATORS, END), ("group_action_job", j3, 1, OPERATORS, END),
                       ("group_action_job", j1, 2, OPERATORS, END)]
    assert sorted(r[0] for r in sql("SELECT log_id FROM failure_notice_entries")) == [e1, e2]
    mails = outbox(sql, "failure:%")
    assert [m[:2] for m in mails] == sorted(
        (f"failure:{src}:{ref}:{occ}:{to}", to)
        for src, ref, occ in (("service_queue", 7, e1), ("group_action_job", j1, 2), ("group_action_job", j3, 1))
        for to in OPERATORS)
    order_mail = next(m for m in mails if m[0].startswith("failure:service_queue:7:"))
    assert order_mail[2] == "[FAILED] Service queue order 7"
    assert "mailbox create failed: quota" in order_mail[3] and "rollback failed" in order_mail[3]
    job_mail = next(m for m in mails if m[0].startswith(f"failure:group_action_job:{j1}:"))
    assert job_mail[2] == f"[FAILED] Group action job {j1}: exchange create_mailbox (attempt 2)"
    assert "WinRM timeout" in job_mail[3]

    # never twice: a rerun of the run, then the next run with nothing new
    for interval in (AT, at(minutes=1)):
        again = failure_notices.send_failure_notifications(db, interval, LOG)
        assert again["order_failures"] == again["job_failures"] == again["emails_queued"] == 0
    assert sql("SELECT count(*) FROM email_outbox") == [(6,)]

    # order 7 fails again, order 10's error is now before the clock, job 1's retry fails again
    e3 = sq_log(sql, 7, "error", "second attempt failed", END.add(minutes=2))
    sql("UPDATE group_action_jobs SET attempts = 3, finished_at = %s, error = 'WinRM refused' WHERE id = %s",
        (END.add(minutes=3), j1))
    later = failure_notices.send_failure_notifications(db, at(minutes=10), LOG)
    assert later["order_failures"] == 2 and later["job_failures"] == 1 and later["emails_queued"] == 6
    assert sql("SELECT ref_id, occurrence FROM failure_notices WHERE noticed_at = %s ORDER BY id",
               (END.add(minutes=10),)) == [(7, e3), (10, e10), (j1, 3)]
    second = outbox(sql, f"failure:service_queue:7:{e3}:%")
    assert len(second) == 2 and "second attempt failed" in second[0][3] and "rollback failed" not in second[0][3]


def test_failure_notices_wait_for_operator_addresses_and_are_bounded(db, sql, monkeypatch):
    for order in range(1, 6):
        sq_log(sql, order, "error", f"order {order} failed", END.subtract(minutes=60 - order))
    monkeypatch.setattr(failure_notices, "_operators", lambda: [])
    nobody = failure_notices.send_failure_notifications(db, AT, LOG)
    assert nobody["skipped"] == {"no operator addresses for failure notices": 5}
    assert sql("SELECT count(*) FROM failure_notices") == [(0,)] and outbox(sql) == []

    monkeypatch.setattr(failure_notices, "_operators", lambda: ["noc@ops.example", "not an address"])
    monkeypatch.setattr(failure_notices, "MAX_FAILURE_NOTICES", 2)
    first = failure_notices.send_failure_notifications(db, at(minutes=10), LOG)
    assert first["order_failures"] == 2 and first["emails_queued"] == 2 and first["deferred"] == 3
    assert [r[0] for r in sql("SELECT ref_id FROM failure_notices ORDER BY id")] == [1, 2]   # oldest first
    failure_notices.send_failure_notifications(db, at(minutes=20), LOG)
    last = failure_notices.send_failure_notifications(db, at(minutes=30), LOG)
    assert last["order_failures"] == 1 and last["deferred"] == 0
    assert [m[1] for m in outbox(sql)] == ["noc@ops.example"] * 5


def test_failure_notice_recipients_come_from_the_catalog():
    assert failure_notices._operators() == ["provisioning-alerts@panelflow.example"]


# --- 34 --------------------------------------------------------------------------------------------

def test_unverified_sign_ups_are_deleted(db, sql):
    old, cutoff = END.subtract(days=40), END.subtract(days=30)
    gone = customer(sql, "Gone", "gone@x.example", signed_up_at=END.subtract(days=31))
    contact = sql("INSERT INTO customer_contacts (customer_id, name, email) VALUES (%s, 'G', 'g@x.example')"
                  " RETURNING id", (gone,))[0][0]
    sql("INSERT INTO credentials (principal_kind, customer_id, login, hash_scheme, password_hash)"
        " VALUES ('customer', %s, 'gone', 'md5', %s)", (gone, hashlib.md5(b"pw").hexdigest()))
    sql("INSERT INTO credentials (principal_kind, contact_id, login, hash_scheme, password_hash)"
        " VALUES ('contact', %s, 'gone-contact', 'md5', %s)", (contact, hashlib.md5(b"pw2").hexdigest()))
    exactly = customer(sql, "Exactly 30 days", signed_up_at=cutoff)
    verified = customer(sql, "Verified", signed_up_at=old, email_verified_at=old.add(hours=1))
    subscribed = customer(sql, "Has a subscription", signed_up_at=old)
    subscription(sql, subscribed)
    invoiced = customer(sql, "Has an invoice", signed_up_at=old)
    sql("INSERT INTO invoices (invoice_number, customer_id, billing_date, currency, due_date)"
        " VALUES ('R20261001-x', %s, '2026-10-01', 'GBP', '2026-10-01')", (invoiced,))
    with_domain = customer(sql, "Has a domain", signed_up_at=old)
    sql("INSERT INTO domains (customer_id, name, contact_email, verification_token) VALUES (%s, 'x.example', 'a@x.example', 't')",
        (with_domain,))
    staff_made = customer(sql, "Created by staff")
    referenced = customer(sql, "Referenced elsewhere", signed_up_at=old.subtract(days=1))
    sql("INSERT INTO o365_price_notifications (customer_id, published_on, changes, outbox_key)"
        " VALUES (%s, '2026-10-01', '[]', 'k')", (referenced,))
    gone_too = customer(sql, "Gone too", signed_up_at=old)

    summary = prov.delete_unverified_customers(db, AT)

    left = {r[0] for r in sql("SELECT id FROM customers")}
    assert left == {exactly, verified, subscribed, invoiced, with_domain, staff_made, referenced}
    assert gone not in left and gone_too not in left
    assert sql("SELECT count(*) FROM customer_contacts") == [(0,)] and sql("SELECT count(*) FROM credentials") == [(0,)]
    assert summary["deleted"] == 2 and summary["unverified_left"] == 4
    assert summary["skipped"] == {"still referenced; not deleted": 1}
    assert summary["skipped_examples"] == [
        f"customer {referenced} (o365_price_notifications_customer_id_fkey): still referenced; not deleted"]
    audit = sql("SELECT occurred_at, actor, action, target, details FROM audit_logs ORDER BY target")
    assert [(a[0], a[1], a[2], a[3]) for a in audit] == [
        (END, "panelflow", "customer.deleted_unverified", f"customer:{c}") for c in sorted((gone, gone_too), key=str)]
    assert all(set(a[4]) == {"signed_up_at", "unverified_days"} for a in audit)  # no personal data kept

    again = prov.delete_unverified_customers(db, AT)
    assert again["deleted"] == 0 and sql("SELECT count(*) FROM audit_logs") == [(2,)]
    # the one exactly at the cutoff goes on a later run
    assert prov.delete_unverified_customers(db, at(minutes=10))["deleted"] == 1


def test_unverified_deletes_are_bounded_per_run(db, sql, monkeypatch):
    monkeypatch.setattr(prov, "MAX_UNVERIFIED_DELETES", 5)
    monkeypatch.setattr(prov, "UNVERIFIED_BATCH", 2)
    ids = [customer(sql, f"U{i}", signed_up_at=END.subtract(days=60 - i)) for i in range(12)]
    sql("INSERT INTO retention_runs (task, interval_end, deleted) VALUES ('delete_unverified_customers', %s, 3)",
        (END.subtract(days=40),))                               # an old run's budget row: pruned
    first = prov.delete_unverified_customers(db, AT)
    assert sql("SELECT interval_end, deleted FROM retention_runs WHERE task = 'delete_unverified_customers'") == [
        (END, 5)]
    assert first["deleted"] == 5 and first["batches"] == 3
    assert sorted(r[0] for r in sql("SELECT id FROM customers")) == ids[5:]      # oldest sign-ups first
    assert prov.delete_unverified_customers(db, AT)["deleted"] == 0            # the run's budget is spent
    assert prov.delete_unverified_customers(db, at(minutes=10))["deleted"] == 5
    assert prov.delete_unverified_customers(db, at(minutes=20))["deleted"] == 2


# --- 38 --------------------------------------------------------------------------------------------

def credential(sql, kind, login, scheme, password_hash, **extra) -> int:
    column = {"employee": "employee_id", "customer": "customer_id", "contact": "contact_id"}[kind]
    ref = extra.pop("ref")
    names = ", ".join(["principal_kind", column, "login", "hash_scheme", "password_hash", *extra])
    marks = ", ".join(["%s"] * (5 + len(extra)))
    return sql(f"INSERT INTO credentials ({names}) VALUES ({marks}) RETURNING id",
               (kind, ref, login, scheme, password_hash, *extra.values()))[0][0]


def test_legacy_hashes_are_wrapped_in_salted_scrypt(db, sql):
    cust = customer(sql, "Logins")
    contact = sql("INSERT INTO customer_contacts (customer_id, name) VALUES (%s, 'C') RETURNING id", (cust,))[0][0]
    md5 = hashlib.md5(b"employee pass").hexdigest()
    sha1 = hashlib.sha1(b"customer pass").hexdigest().upper()        # the old panel stored some upper-case
    sha256 = hashlib.sha256(b"contact pass").hexdigest()
    emp = credential(sql, "employee", "admin", "md5", md5, ref=11)
    cus = credential(sql, "customer", "cust", "sha1", sha1, ref=cust)
    con = credential(sql, "contact", "contact", "sha256", sha256, ref=contact)
    bad = credential(sql, "employee", "broken", "md5", "not-a-digest-but-secretish", ref=12)
    kept = credential(sql, "employee", "modern", "scrypt", "ab" * 32, ref=13, salt=b"s" * 16,
                      kdf_params='{"n": 16, "r": 8, "p": 1, "dklen": 32}')

    summary = passwords.salt_passwords(db, AT)

    assert summary["salted"] == 3 and summary["left_for_next_run"] == 0
    assert summary["skipped"] == {"not a md5 hex digest": 1}
    assert summary["skipped_examples"] == [f"employee credential {bad}: not a md5 hex digest"]
    assert "not-a-digest" not in str(summary) and md5 not in str(summary)
    rows = {r[0]: r[1:] for r in sql("SELECT id, hash_scheme, password_hash, salt, kdf_params, salted_at"
                                     " FROM credentials")}
    for cid, scheme, legacy, password in ((emp, "md5", md5, "employee pass"), (cus, "sha1", sha1, "customer pass"),
                                          (con, "sha256", sha256, "contact pass")):
        new_scheme, new_hash, salt, params, salted_at = rows[cid]
        assert new_scheme == f"scrypt+{scheme}" and salted_at == END and len(salt) == 16
        assert params == {"n": 2**14, "r": 8, "p": 1, "dklen": 32}
        # hand-checked: scrypt of the legacy digest (lower-case hex) with the row's salt
        assert new_hash == hashlib.scrypt(legacy.lower().encode(), salt=bytes(salt), n=2**14, r=8, p=1,
                                          dklen=32).hex()
        assert passwords.verify_password(password, new_scheme, new_hash, salt, params)
        assert not passwords.verify_password(password + "x", new_scheme, new_hash, salt, params)
    assert rows[emp][2] != rows[cus][2]                              # a salt per row
    assert rows[bad][:2] == ("md5", "not-a-digest-but-secretish") and rows[kept][0] == "scrypt"

    again = passwords.salt_passwords(db, at(minutes=10))
    assert again["salted"] == 0 and sql("SELECT count(*) FROM credentials WHERE salted_at > %s", (END,)) == [(0,)]


def test_salting_is_batched_bounded_and_never_overwrites_a_new_password(db, sql, monkeypatch):
    monkeypatch.setattr(passwords, "SCRYPT", {"n": 16, "r": 8, "p": 1, "dklen": 32})
    monkeypatch.setattr(passwords, "SALT_BATCH", 3)
    monkeypatch.setattr(passwords, "MAX_SALTED_PER_RUN", 7)
    ids = [credential(sql, "employee", f"e{i}", "md5", hashlib.md5(f"pw{i}".encode()).hexdigest(), ref=i)
           for i in range(10)]
    changed = ids[1]
    wrap = passwords.wrap_legacy_hash

    def wrap_while_user_changes_password(scheme, legacy_hex, *args, **kwargs):
        if legacy_hex == hashlib.md5(b"pw1").hexdigest():  # the user sets a new password meanwhile
            sql("UPDATE credentials SET hash_scheme = 'md5', password_hash = %s WHERE id = %s",
                (hashlib.md5(b"brand new").hexdigest(), changed))
        return wrap(scheme, legacy_hex, *args, **kwargs)

    monkeypatch.setattr(passwords, "wrap_legacy_hash", wrap_while_user_changes_password)
    first = passwords.salt_passwords(db, AT)
    assert first["salted"] == 7 and first["changed_meanwhile"] == 1 and first["left_for_next_run"] == 2
    assert sql("SELECT hash_scheme, password_hash FROM credentials WHERE id = %s", (changed,)) == [
        ("md5", hashlib.md5(b"brand new").hexdigest())]
    second = passwords.salt_passwords(db, at(minutes=10))
    assert second["salted"] == 3 and second["left_for_next_run"] == 0
    assert sql("SELECT count(*) FROM credentials WHERE hash_scheme = 'scrypt+md5'") == [(10,)]
    row = sql("SELECT password_hash, salt, kdf_params FROM credentials WHERE id = %s", (changed,))[0]
    assert passwords.verify_password("brand new", "scrypt+md5", *row)


# --- 39 --------------------------------------------------------------------------------------------

def unpaid(sql, cust, lines, *, status="open", currency="GBP", day="2026-11-01") -> int:
    """An invoice of ``lines`` (subscription, amount, tax)."""
    total = sum(D(a) + D(t) for _, a, t in lines)
    inv = sql("INSERT INTO invoices (invoice_number, customer_id, billing_date, currency, total, status, due_date)"
              " VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id",
              (f"R{day}-{cust}-{status}", cust, day, currency, total, status, day))[0][0]
    for sub, amount, tax in lines:
        sql("INSERT INTO invoice_lines (invoice_id, kind, subscription_id, description, period_start, period_end,"
            " quantity, unit_price, amount, tax_amount) VALUES (%s, 'subscription', %s, 'x', %s, '2026-12-01', 1,"
            " %s, %s, %s)", (inv, sub, day, amount, amount, tax))
    return inv


def test_subscription_credit_limits(db, sql):
    a = customer(sql, "Limit 100", credit_limit="100.00")
    s1, s2, s3 = subscription(sql, a), subscription(sql, a), subscription(sql, a, status="cancelled")
    open_a = unpaid(sql, a, [(s1, "30.00", "6.00"), (s2, "20.00", "4.00")])
    unpaid(sql, a, [(s1, "10.00", "0.00")], status="payment_declined", day="2026-10-01")
    unpaid(sql, a, [(s2, "50.00", "10.00")], status="paid", day="2026-09-01")
    b = customer(sql, "Over its limit", credit_limit="10.00")
    s4, s5 = subscription(sql, b), subscription(sql, b, status="suspended")
    unpaid(sql, b, [(s4, "25.00", "0.00")])
    c = customer(sql, "No limit")
    s6 = subscription(sql, c)
    d = customer(sql, "Foreign unpaid", credit_limit="50.00")
    s7 = subscription(sql, d)
    unpaid(sql, d, [(s7, "5.00", "0.00")], currency="EUR")
    e = customer(sql, "Subscription in EUR", credit_limit="50.00")
    s8, s9 = subscription(sql, e), subscription(sql, e, currency="EUR")
    sql("INSERT INTO subscription_credit_limits (subscription_id, customer_id, currency, customer_credit_limit,"
        " own_usage, other_usage, credit_limit, synced_at) VALUES (%s, %s, 'GBP', 5, 0, 0, 5, %s)",
        (s6, c, END.subtract(days=1)))                          # its customer's limit was removed since

    summary = prov.sync_subscription_credit_limits(db, AT)

    limits = {r[0]: r[1:] for r in sql("SELECT subscription_id, customer_credit_limit, own_usage, other_usage,"
                                       " credit_limit, synced_at FROM subscription_credit_limits")}
    # A: s1 owes 36 + 10 = 46, s2 owes 24 (the paid 60 does not count)
    assert limits[s1] == (D("100.00"), D("46.00"), D("24.00"), D("76.00"), END)
    assert limits[s2] == (D("100.00"), D("24.00"), D("46.00"), D("54.00"), END)
    # B: s4 alone uses more than the limit; what is left for s5 is nothing
    assert limits[s4] == (D("10.00"), D("25.00"), D("0.00"), D("10.00"), END)
    assert limits[s5] == (D("10.00"), D("0.00"), D("25.00"), D("0.00"), END)
    assert limits[s8] == (D("50.00"), D("0.00"), D("0.00"), D("50.00"), END)
    assert set(limits) == {s1, s2, s4, s5, s8}                  # s3 cancelled, s6 no limit, s7 and s9 skipped
    assert summary["limits_added"] == 5 and summary["limits_removed"] == 1 and summary["subscriptions"] == 7
    assert summary["skipped"] == {"customer has unpaid invoices in EUR": 1,
                                  "subscription currency EUR differs from the customer's GBP": 1}

    again = prov.sync_subscription_credit_limits(db, at(minutes=10))
    assert (again["limits_added"], again["limits_changed"], again["limits_removed"]) == (0, 0, 0)
    # the open invoice is paid: both of A's limits move, nothing else
    sql("UPDATE invoices SET status = 'paid' WHERE id = %s", (open_a,))
    later = prov.sync_subscription_credit_limits(db, at(minutes=20))
    assert later["limits_changed"] == 2 and later["limits_added"] == 0
    assert sql("SELECT subscription_id, own_usage, other_usage, credit_limit, synced_at FROM subscription_credit_limits"
               " WHERE customer_id = %s ORDER BY 1", (a,)) == [
        (s1, D("10.00"), D("0.00"), D("100.00"), END.add(minutes=20)),
        (s2, D("0.00"), D("10.00"), D("90.00"), END.add(minutes=20))]
    assert sql("SELECT synced_at FROM subscription_credit_limits WHERE subscription_id = %s", (s4,)) == [(END,)]


# --- 41 --------------------------------------------------------------------------------------------

def bin_item(sql, cust, kind, name, purge_at, deleted_at=None) -> int:
    return sql("INSERT INTO recycle_bin_items (customer_id, kind, name, deleted_at, purge_at) VALUES (%s, %s, %s, %s, %s)"
               " RETURNING id", (cust, kind, name, deleted_at or END.subtract(days=20), purge_at))[0][0]


def test_recycle_bin_notices_once_per_item_and_reminder(db, sql):
    cust = customer(sql, "Bin Owner", "owner@bin.example")
    nomail = customer(sql, "No Mail", "not-an-address")
    far = bin_item(sql, cust, "mailbox", "old@bin.example", END.add(days=10))
    soon = bin_item(sql, cust, "user", "jdoe", END.add(days=5))
    last = bin_item(sql, cust, "site", "intranet", END.add(hours=12))         # late past both: only the last
    bin_item(sql, cust, "mailbox", "purged@bin.example", END.subtract(hours=1))
    unmailable = bin_item(sql, nomail, "mailbox", "x@nomail.example", END.add(days=6))
    bin_item(sql, cust, "user", "deleted later", END.add(days=3), deleted_at=END.add(hours=1))

    summary = recycle_bin.send_recycle_bin_notifications(db, AT)

    assert summary["notices"] == 2 and summary["emails_queued"] == 2
    assert summary["reminder_0"] == 1 and summary["reminder_1"] == 1
    assert summary["skipped"] == {"customer has no usable e-mail address": 1}
    assert summary["skipped_examples"] == [
        f"recycle-bin item {unmailable} (customer {nomail}, not-an-address): customer has no usable e-mail address"]
    mails = outbox(sql)
    assert [(m[0], m[1]) for m in mails] == [(f"recycle-bin:{soon}:0", "owner@bin.example"),
                                             (f"recycle-bin:{last}:1", "owner@bin.example")]
    assert mails[0][2] == "User jdoe will be deleted permanently on 2026-11-25"
    assert "5 days from now" in mails[0][3] and "Test Hosting" in mails[0][3]
    assert mails[1][2] == "Last reminder: Site intranet will be deleted permanently on 2026-11-20"
    assert "1 day from now" in mails[1][3] and "last reminder" in mails[1][3]

    assert recycle_bin.send_recycle_bin_notifications(db, AT)["notices"] == 0
    # four days on: jdoe's last reminder, and the far mailbox's first
    later = recycle_bin.send_recycle_bin_notifications(db, at(days=4))
    assert later["notices"] == 2
    assert sorted(r[0] for r in sql("SELECT outbox_key FROM recycle_bin_notices")) == sorted([
        f"recycle-bin:{soon}:0", f"recycle-bin:{last}:1", f"recycle-bin:{soon}:1", f"recycle-bin:{far}:0"])
    assert len(outbox(sql)) == 4
    # the address fixed: the item's notice goes, once
    sql("UPDATE customers SET email = 'fixed@nomail.example' WHERE id = %s", (nomail,))
    assert recycle_bin.send_recycle_bin_notifications(db, at(days=4))["notices"] == 1
    assert recycle_bin.send_recycle_bin_notifications(db, at(days=4, minutes=10))["notices"] == 0


# --- 42, 43 ----------------------------------------------------------------------------------------

def dl(sql, cust, name, deleted_at) -> int:
    return sql("INSERT INTO recovery_distribution_lists (customer_id, name, email_address, definition, deleted_at)"
               " VALUES (%s, %s, %s, '{\"members\": [\"a@x.example\"]}', %s) RETURNING id",
               (cust, name, f"{name}@lists.example", deleted_at))[0][0]


def test_recovery_notices_and_purge(db, sql):
    cust = customer(sql, "Lists Ltd", "admin@lists.example")
    fresh = dl(sql, cust, "sales", END.subtract(hours=1))
    ending = dl(sql, cust, "support", END.subtract(days=28))       # 2 days left: the last reminder only
    expired = dl(sql, cust, "old", END.subtract(days=31))
    exactly = dl(sql, cust, "edge", END.subtract(days=30))          # its period ends at the clock
    sql("INSERT INTO recovery_notices VALUES (%s, 0, %s, 'recovery:%s:0')", (expired, END.subtract(days=31), expired))

    summary = recycle_bin.send_recovery_notifications(db, AT)

    assert summary["notices"] == 2 and summary["reminder_0"] == 1 and summary["reminder_1"] == 1
    mails = outbox(sql)
    assert [m[0] for m in mails] == [f"recovery:{fresh}:0", f"recovery:{ending}:1"]
    assert mails[0][2] == "Distribution list sales deleted: recoverable until 2026-12-20"
    assert "sales@lists.example" in mails[0][3] and "was deleted on 2026-11-20" in mails[0][3]
    assert mails[1][2] == "Last reminder: distribution list support will be deleted permanently on 2026-11-22"
    assert "2 days from now" in mails[1][3]
    assert recycle_bin.send_recovery_notifications(db, at(minutes=10))["notices"] == 0

    purged = recycle_bin.purge_expired_recovery_distribution_lists(db, AT)
    assert purged["deleted"] == 1
    assert {r[0] for r in sql("SELECT id FROM recovery_distribution_lists")} == {fresh, ending, exactly}
    assert sql("SELECT count(*) FROM recovery_notices WHERE distribution_list_id = %s", (expired,)) == [(0,)]
    assert recycle_bin.purge_expired_recovery_distribution_lists(db, AT)["deleted"] == 0
    assert recycle_bin.purge_expired_recovery_distribution_lists(db, at(minutes=10))["deleted"] == 1
    assert {r[0] for r in sql("SELECT id FROM recovery_distribution_lists")} == {fresh, ending}


def test_recovery_purge_is_bounded(db, sql, monkeypatch):
    monkeypatch.setattr(recycle_bin, "MAX_RECOVERY_PURGE", 3)
    monkeypatch.setattr(recycle_bin, "RECOVERY_PURGE_BATCH", 2)
    cust = customer(sql, "Many lists")
    for i in range(7):
        dl(sql, cust, f"l{i}", END.subtract(days=40 + i))
    first = recycle_bin.purge_expired_recovery_distribution_lists(db, AT)
    assert first["deleted"] == 3 and first["batches"] == 2
    assert sorted(r[0] for r in sql("SELECT name FROM recovery_distribution_lists")) == ["l0", "l1", "l2", "l3"]
    assert recycle_bin.purge_expired_recovery_distribution_lists(db, AT)["deleted"] == 0
    assert recycle_bin.purge_expired_recovery_distribution_lists(db, at(minutes=10))["deleted"] == 3


def test_deleted_customer_takes_its_rows_with_it(db, sql):
    """Every 0011 table that hangs off a customer cascades: an unverified sign-up leaves nothing behind."""
    cust = customer(sql, "Whole", "w@x.example", signed_up_at=END.subtract(days=90))
    bin_item(sql, cust, "user", "u", END.add(days=1))
    dl(sql, cust, "l", END.subtract(days=1))
    assert prov.delete_unverified_customers(db, AT)["deleted"] == 1
    assert sql("SELECT (SELECT count(*) FROM recycle_bin_items) + (SELECT count(*) FROM recovery_distribution_lists)") == [(0,)]


def test_interval_dates_use_the_threads_time_zone():
    assert prov.local_date(pendulum.datetime(2026, 6, 30, 23, 30, tz="UTC"), "Europe/London") == date(2026, 7, 1)
    assert prov.local_date(END, "Europe/London") == date(2026, 11, 20)
    assert timedelta(days=recycle_bin.RECOVERY_DAYS) == timedelta(days=30)
