"""UsageReportScheduleWork on the real panel DB: due schedules e-mailed once per period with a
hand-checked CSV, next runs computed from the period, missed periods caught up, bad schedules
reported and skipped, reports of UsageReportWork's stored reports waiting for their source, and a
report really delivered over SMTP with its attachment."""

from __future__ import annotations

import csv
import io
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from panelflow.step import Interval
from panelflow.steps import reports
from panelflow.steps.reports import send_scheduled_enterprise_reports

TZ = "Europe/London"
LONDON, UTC = ZoneInfo(TZ), ZoneInfo("UTC")
DEC1 = datetime(2026, 12, 1, 0, 45, tzinfo=LONDON)  # the :45 run just after November ended (GMT: = UTC)
OWN_TABLES = ("report_schedules", "sent_reports", "subscription_quotas", "resource_usage_samples", "quota_overuse",
              "subscription_quota_rechecks", "voice_bundles", "voice_bundle_notices", "exchange_servers",
              "addon_usage_reports")


def at(clock: datetime) -> Interval:
    return Interval(clock, clock, TZ)  # a trigger timetable: zero-length interval, the clock is its end


def one(sql, query, params=None):
    return sql(query, params)[0][0]


@pytest.fixture
def world(panel_db, sql):
    sql("TRUNCATE " + ", ".join(OWN_TABLES) + " RESTART IDENTITY CASCADE")
    sql("INSERT INTO currencies VALUES ('GBP', 'Pound sterling', 2)")
    sql("INSERT INTO providers (name, billing_email, currency) VALUES ('Test Hosting', 'billing@test.example', 'GBP')")
    sql("INSERT INTO resellers (provider_id, name, email) VALUES (1, 'Reseller One', 'r1@test.example')")

    def customer(name, reseller=None, status="active"):
        return one(sql, "INSERT INTO customers (provider_id, reseller_id, name, email, country, currency, status)"
                        " VALUES (1, %s, %s, 'x@test.example', 'GB', 'GBP', %s) RETURNING id", (reseller, name, status))

    def subscription(cust, plan):
        return one(sql, "INSERT INTO subscriptions (customer_id, plan, price, currency, billing_cycle, next_bill_date,"
                        " started_on) VALUES (%s, %s, 10, 'GBP', 'monthly', '2026-12-01', '2026-01-01') RETURNING id",
                   (cust, plan))

    def schedule(kind, frequency, next_run_on, recipients, *, customer=None, reseller=None, status="active"):
        return one(sql, "INSERT INTO report_schedules (customer_id, reseller_id, report_kind, recipients, frequency,"
                        " next_run_on, status) VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id",
                   (customer, reseller, kind, recipients, frequency, next_run_on, status))

    return {"db": panel_db, "customer": customer, "subscription": subscription, "schedule": schedule}


def sample(sql, sub, resource, when, used):
    sql("INSERT INTO resource_usage_samples (subscription_id, resource, sampled_at, used) VALUES (%s, %s, %s, %s)",
        (sub, resource, when, used))


def call(sql, table, sub, started_at, seconds):
    column = "caller" if table == "ocs_call_records" else "sip_account"
    sql(f"INSERT INTO {table} (subscription_id, {column}, destination, started_at, duration_seconds)"
        " VALUES (%s, 'user', '441632960000', %s, %s)", (sub, started_at, seconds))


def attachment(sql, dedupe_key):
    filename, content_type, content = sql(
        "SELECT a.filename, a.content_type, a.content FROM email_outbox o JOIN email_outbox_attachments a"
        " ON a.outbox_id = o.id WHERE o.dedupe_key = %s", (dedupe_key,))[0]
    assert content_type == "text/csv"
    return filename, list(csv.reader(io.StringIO(bytes(content).decode("utf-8"))))


def next_runs(sql):
    return dict(sql("SELECT id, next_run_on FROM report_schedules"))


@pytest.fixture
def november(world, sql):
    """Customers with usage in November 2026 and schedules due, not due and bad."""
    w = world
    alpha = w["customer"]("Alpha, Ltd")  # a comma: the CSV quotes it
    exchange, hosting = w["subscription"](alpha, "Exchange"), w["subscription"](alpha, "=Hosting")
    gamma = w["customer"]("Gamma", reseller=1)
    delta = w["customer"]("Delta", reseller=1)
    trunk, lync = w["subscription"](gamma, "SIP trunk"), w["subscription"](delta, "Lync")
    idle = w["customer"]("Idle Ltd")
    suspended = w["customer"]("Suspended Ltd", status="suspended")

    # resource usage: November is [1 Nov 00:00, 1 Dec 00:00) London (GMT then: the same in UTC)
    sql("INSERT INTO subscription_quotas (subscription_id, resource, quota_limit) VALUES"
        " (%s, 'mailbox_storage', 2048), (%s, 'users', 25), (%s, 'disk_space', NULL)", (exchange, exchange, hosting))
    sample(sql, exchange, "mailbox_storage", datetime(2026, 10, 31, 23, 59, 59, tzinfo=UTC), 5000)  # October
    sample(sql, exchange, "mailbox_storage", datetime(2026, 11, 5, tzinfo=UTC), 1000)
    sample(sql, exchange, "mailbox_storage", datetime(2026, 11, 20, tzinfo=UTC), 3000.5)
    sample(sql, exchange, "mailbox_storage", datetime(2026, 11, 30, 23, 59, tzinfo=UTC), 1900)
    sample(sql, exchange, "mailbox_storage", datetime(2026, 12, 1, tzinfo=UTC), 9999)  # December
    sample(sql, hosting, "disk_space", datetime(2026, 11, 10, tzinfo=UTC), 500)
    sample(sql, hosting, "flux_capacitor", datetime(2026, 11, 10, tzinfo=UTC), 7)  # unknown resource: not reported

    # voice: the week [23 Nov, 30 Nov)
    call(sql, "ocs_call_records", trunk, datetime(2026, 11, 23, tzinfo=UTC), 61)             # 2 min
    call(sql, "ocs_call_records", trunk, datetime(2026, 11, 29, 23, 59, 59, tzinfo=UTC), 1)  # 1 min
    call(sql, "ocs_call_records", trunk, datetime(2026, 11, 29, 12, tzinfo=UTC), 0)          # unanswered
    call(sql, "ocs_call_records", trunk, datetime(2026, 11, 30, tzinfo=UTC), 120)            # next week
    call(sql, "ocs_call_records", trunk, datetime(2026, 11, 22, 23, 59, tzinfo=UTC), 120)    # week before
    for i in range(3):
        call(sql, "sip_usage", trunk, datetime(2026, 11, 24, 9, i, tzinfo=UTC), 59)          # 3 × 1 min
    call(sql, "sip_usage", exchange, datetime(2026, 11, 24, 9, 0, tzinfo=UTC), 600)         # not the reseller's
    sql("INSERT INTO voice_bundles (subscription_id, name, minutes_per_month) VALUES (%s, 'UK 500', 500)", (lync,))

    s = w["schedule"]
    ids = {
        "monthly": s("resource_usage", "monthly", date(2026, 12, 1),
                     [" it@alpha.example", "boss@alpha.example", "it@alpha.example", "not-an-address", ""],
                     customer=alpha),
        "weekly": s("voice_usage", "weekly", date(2026, 11, 30), ["noc@reseller.example"], reseller=1),
        "catch_up": s("resource_usage", "daily", date(2026, 11, 29), ["ops@idle.example"], customer=idle),
        "no_recipients": s("voice_usage", "daily", date(2026, 11, 30), [], customer=alpha),
        "bad_address": s("voice_usage", "daily", date(2026, 11, 30), ["nope"], customer=alpha),
        "suspended": s("voice_usage", "daily", date(2026, 11, 30), ["x@suspended.example"], customer=suspended),
        "not_due": s("voice_usage", "daily", date(2026, 12, 2), ["x@alpha.example"], customer=alpha),
        "paused": s("voice_usage", "daily", date(2026, 11, 1), ["x@alpha.example"], customer=alpha, status="paused"),
    }
    return {**w, "ids": ids, "subs": {"exchange": exchange, "hosting": hosting, "trunk": trunk, "lync": lync},
            "customers": {"alpha": alpha, "gamma": gamma, "delta": delta}}


def test_due_reports_sent_once_with_hand_checked_csv(november, sql):
    db, ids, subs, custs = november["db"], november["ids"], november["subs"], november["customers"]
    before = next_runs(sql)

    summary = send_scheduled_enterprise_reports(panel_db=db, interval=at(DEC1))

    assert summary["reports_sent"] == 5  # monthly 1 + weekly 1 + 3 missed days of the daily one
    assert summary["emails_queued"] == 6 and summary["schedules_advanced"] == 3
    assert summary["skipped"] == {"recipient address not valid": 1, "schedule has no recipients": 1,
                                  "no valid recipient address": 1, "customer suspended": 1}
    assert f"schedule {ids['monthly']} (customer {custs['alpha']}): 'not-an-address': recipient address not valid" \
        in summary["skipped_examples"]

    # the monthly resource report: November, to both valid addresses (once each)
    m = ids["monthly"]
    assert sql("SELECT to_address, subject FROM email_outbox WHERE dedupe_key LIKE %s ORDER BY to_address",
               (f"report-{m}-2026-11-01:%",)) == [
        ("boss@alpha.example", "Test Hosting resource usage report for Alpha, Ltd: November 2026"),
        ("it@alpha.example", "Test Hosting resource usage report for Alpha, Ltd: November 2026")]
    filename, rows = attachment(sql, f"report-{m}-2026-11-01:it@alpha.example")
    assert filename == "resource-usage-20261101-20261130.csv"
    a, ex, ho = custs["alpha"], subs["exchange"], subs["hosting"]
    assert rows == [
        ["customer_id", "customer", "subscription_id", "plan", "resource", "unit", "quota", "peak_used", "last_used",
         "samples", "over_quota"],
        # 1000, 3000.5, 1900 in November (October's 5000 and December's 9999 are not)
        [str(a), "Alpha, Ltd", str(ex), "Exchange", "mailbox_storage", "MB", "2048", "3000.5", "1900", "3", "yes"],
        [str(a), "Alpha, Ltd", str(ex), "Exchange", "users", "users", "25", "", "", "0", ""],
        [str(a), "Alpha, Ltd", str(ho), "'=Hosting", "disk_space", "MB", "unlimited", "500", "500", "1", ""]]
    body = one(sql, "SELECT body_text FROM email_outbox WHERE dedupe_key = %s", (f"report-{m}-2026-11-01:it@alpha.example",))
    assert "Over quota in the period: 1" in body and "2026-11-01 to 2026-11-30" in body

    # the reseller's weekly voice report: its customers only, Delta before Gamma
    w = ids["weekly"]
    filename, rows = attachment(sql, f"report-{w}-2026-11-23:noc@reseller.example")
    assert filename == "voice-usage-20261123-20261129.csv"
    assert rows[1:] == [
        [str(custs["delta"]), "Delta", str(subs["lync"]), "Lync", "0", "0", "0", "0", "0", "500"],
        [str(custs["gamma"]), "Gamma", str(subs["trunk"]), "SIP trunk", "2", "3", "3", "3", "6", ""]]
    assert one(sql, "SELECT subject FROM email_outbox WHERE dedupe_key LIKE %s", (f"report-{w}-%",)) == \
        "Test Hosting voice usage report for Reseller One: 23 Nov to 29 Nov 2026"

    # the daily one missed three days: each sent, oldest first, nothing in them
    c = ids["catch_up"]
    assert sql("SELECT period_start, period_end, row_count FROM sent_reports WHERE schedule_id = %s"
               " ORDER BY period_start", (c,)) == [
        (date(2026, 11, 28), date(2026, 11, 29), 0), (date(2026, 11, 29), date(2026, 11, 30), 0),
        (date(2026, 11, 30), date(2026, 12, 1), 0)]
    assert attachment(sql, f"report-{c}-2026-11-30:ops@idle.example")[1] == [list(reports.COLUMNS["resource_usage"])]

    # next runs: one period on from the period sent; bad, paused and not-due schedules untouched
    assert next_runs(sql) == {**before, m: date(2027, 1, 1), w: date(2026, 12, 7), c: date(2026, 12, 2)}

    # a rerun (or a retry, or the next hour's run) sends nothing
    outbox = sql("SELECT id, dedupe_key FROM email_outbox ORDER BY id")
    for clock in (DEC1, DEC1 + timedelta(hours=1)):
        again = send_scheduled_enterprise_reports(panel_db=db, interval=at(clock))
        assert again["reports_sent"] == 0 and again["emails_queued"] == 0
        assert again["skipped"]["schedule has no recipients"] == 1  # still reported until fixed
    assert sql("SELECT id, dedupe_key FROM email_outbox ORDER BY id") == outbox

    # fixed, the skipped schedule sends the periods it missed
    sql("UPDATE report_schedules SET recipients = '{sales@alpha.example}' WHERE id = %s", (ids["no_recipients"],))
    fixed = send_scheduled_enterprise_reports(panel_db=db, interval=at(DEC1 + timedelta(hours=2)))
    assert fixed["reports_sent"] == 2 and fixed["emails_queued"] == 2  # 29 and 30 November
    assert next_runs(sql)[ids["no_recipients"]] == date(2026, 12, 2)
    assert attachment(sql, f"report-{ids['no_recipients']}-2026-11-30:sales@alpha.example")[1][1:] == []
    # the next day, the daily schedules' 1 December is due
    assert send_scheduled_enterprise_reports(panel_db=db, interval=at(DEC1 + timedelta(days=1)))["reports_sent"] == 3


def test_period_counted_in_the_thread_time_zone_and_catch_up_bounded(world, sql, monkeypatch):
    db = world["db"]
    cust = world["customer"]("Summer Ltd")
    sub = world["subscription"](cust, "SIP trunk")
    # 15 July in BST is [14 July 23:00 UTC, 15 July 23:00 UTC)
    call(sql, "sip_usage", sub, datetime(2026, 7, 14, 22, 59, tzinfo=UTC), 60)   # 14 July 23:59 BST
    call(sql, "sip_usage", sub, datetime(2026, 7, 14, 23, 30, tzinfo=UTC), 90)   # 15 July 00:30 BST: 2 min
    call(sql, "sip_usage", sub, datetime(2026, 7, 15, 23, 30, tzinfo=UTC), 60)   # 16 July 00:30 BST
    sched = world["schedule"]("voice_usage", "daily", date(2026, 7, 5), ["it@summer.example"], customer=cust)

    monkeypatch.setattr(reports, "MAX_PERIODS_PER_SCHEDULE", 4)
    clock = datetime(2026, 7, 16, 0, 45, tzinfo=LONDON)
    first = send_scheduled_enterprise_reports(panel_db=db, interval=at(clock))
    assert first["reports_sent"] == 4 and next_runs(sql)[sched] == date(2026, 7, 9)  # 4 of the 12 days due
    for _ in range(2):
        send_scheduled_enterprise_reports(panel_db=db, interval=at(clock))
    assert next_runs(sql)[sched] == date(2026, 7, 17)
    assert one(sql, "SELECT count(*) FROM sent_reports") == 12  # 4 July … 15 July, each once
    rows = attachment(sql, f"report-{sched}-2026-07-15:it@summer.example")[1]
    assert rows[1:] == [[str(cust), "Summer Ltd", str(sub), "SIP trunk", "0", "0", "1", "2", "2", ""]]


def test_a_report_really_goes_out_with_its_csv(november, sql, smtp_server):
    from panelflow.services.outbox import send_due

    db, ids = november["db"], november["ids"]
    send_scheduled_enterprise_reports(panel_db=db, interval=at(DEC1))
    with db.get_conn() as conn:
        result = send_due(conn, as_of=DEC1 + timedelta(minutes=5), claimer="test")
    assert result["sent"] == 6 and result["failed"] == 0

    (msg,) = [m for m in smtp_server.messages if m["To"] == "noc@reseller.example"]
    # a subject this long is folded right after "Subject:"; the stdlib parser keeps the fold's space
    assert msg["Subject"].strip() == "Test Hosting voice usage report for Reseller One: 23 Nov to 29 Nov 2026"
    text = msg.get_body(("plain",)).get_content()
    assert "Answered calls: 5" in text and "Minutes: 6" in text
    assert "<td>Gamma</td>" in msg.get_body(("html",)).get_content()
    (part,) = list(msg.iter_attachments())
    assert part.get_filename() == "voice-usage-20261123-20261129.csv" and part.get_content_type() == "text/csv"
    content = part.get_content()
    content = content.decode() if isinstance(content, bytes) else content
    assert list(csv.reader(io.StringIO(content)))[2][1:] == ["Gamma", str(november["subs"]["trunk"]), "SIP trunk",
                                                             "2", "3", "3", "3", "6", ""]
    assert sorted(m["To"] for m in smtp_server.messages) == [
        "boss@alpha.example", "it@alpha.example", "noc@reseller.example"] + ["ops@idle.example"] * 3
    assert one(sql, "SELECT count(*) FROM email_outbox WHERE status = 'sent'") == 6
    assert ids  # the schedules the fixture made


def exchange_report(sql, org, day, mailboxes):
    """A day's row as UsageReportWork 1 stores it: users, one shared, one room; 1 GiB and 100 items per mailbox."""
    sql("INSERT INTO exchange_usage_reports (organization_id, report_date, mailboxes, user_mailboxes,"
        " shared_mailboxes, resource_mailboxes, total_item_size_bytes, total_deleted_item_size_bytes, item_count,"
        " read_at) VALUES (%s, %s, %s, %s, 1, 1, %s, 0, %s, %s)",
        (org, day, mailboxes, mailboxes - 2, mailboxes << 30, mailboxes * 100,
         datetime.combine(day, datetime.min.time(), LONDON) + timedelta(hours=15, minutes=20)))


@pytest.fixture
def stored_reports(world, sql):
    """Customers with Exchange organisations and add-ons, and schedules of the two stored-report kinds."""
    w = world
    alpha = w["customer"]("Alpha, Ltd")
    gamma = w["customer"]("Gamma", reseller=1)
    w["customer"]("Delta", reseller=1)  # the reseller's, with nothing to report
    sql("INSERT INTO exchange_servers (name, fqdn, conn_id, roles) VALUES ('EX01', 'ex01.test', 'exch_ex01',"
        " '{Mailbox}')")
    orgs = dict(sql("INSERT INTO exchange_organizations (customer_id, exchange_server_id, name, organizational_unit)"
                    " VALUES (%s, 1, 'Alpha Mail', 'OU=Alpha'), (%s, 1, '=Gamma', 'OU=Gamma') RETURNING name, id",
                    (alpha, gamma)))
    mail, gmail = orgs["Alpha Mail"], orgs["=Gamma"]
    # UsageReportWork is behind: its last report is of 29 November
    for org, day, mailboxes in ((mail, date(2026, 10, 31), 9), (mail, date(2026, 11, 1), 10),
                                (gmail, date(2026, 11, 22), 8), (gmail, date(2026, 11, 23), 4),
                                (gmail, date(2026, 11, 29), 5)):
        exchange_report(sql, org, day, mailboxes)
    for cust, plan, addons in ((alpha, "Exchange", [("Archiving", 1.50, 3), ("Backup ", 2, 1)]),
                               (gamma, "Exchange", [("Archiving", 1.50, 2), ("Old", 9, 1, "cancelled")])):
        sub = w["subscription"](cust, plan)
        for name, price, quantity, *status in addons:
            sql("INSERT INTO subscription_addons (subscription_id, name, price, quantity, status)"
                " VALUES (%s, %s, %s, %s, %s)", (sub, name, price, quantity, status[0] if status else "active"))
    s = w["schedule"]
    ids = {
        "exchange_monthly": s("exchange_usage", "monthly", date(2026, 12, 1), ["it@alpha.example"], customer=alpha),
        "exchange_weekly": s("exchange_usage", "weekly", date(2026, 11, 30), ["noc@reseller.example"], reseller=1),
        "addon_monthly": s("addon_usage", "monthly", date(2026, 12, 1), ["noc@reseller.example"], reseller=1),
    }
    return {**w, "ids": ids, "orgs": orgs, "customers": {"alpha": alpha, "gamma": gamma}}


def test_stored_usage_reports_wait_for_their_source_then_are_sent_once(stored_reports, sql):
    from panelflow.steps.addon_usage import addon_usage_report

    db, ids, orgs, custs = stored_reports["db"], stored_reports["ids"], stored_reports["orgs"], \
        stored_reports["customers"]
    before = next_runs(sql)

    # 00:45 on 1 December: the week's Exchange reports are there; November's last day and the
    # add-on report of November (taken at 03:20) are not — those periods wait, still due
    first = send_scheduled_enterprise_reports(panel_db=db, interval=at(DEC1))
    assert first["reports_sent"] == 1 and first["periods_waiting_for_source"] == 2 and first["skipped"] == {}
    assert next_runs(sql) == {**before, ids["exchange_weekly"]: date(2026, 12, 7)}
    assert sql("SELECT schedule_id FROM sent_reports") == [(ids["exchange_weekly"],)]
    w = ids["exchange_weekly"]
    filename, rows = attachment(sql, f"report-{w}-2026-11-23:noc@reseller.example")
    assert filename == "exchange-usage-20261123-20261129.csv"
    g, gm = custs["gamma"], orgs["=Gamma"]
    assert rows == [list(reports.COLUMNS["exchange_usage"]),  # 22 November is the week before
                    [str(g), "Gamma", str(gm), "'=Gamma", "2026-11-23", "", "4", "2", "1", "1", str(4 << 30), "0",
                     "400"],
                    [str(g), "Gamma", str(gm), "'=Gamma", "2026-11-29", "", "5", "3", "1", "1", str(5 << 30), "0",
                     "500"]]
    body = one(sql, "SELECT body_text FROM email_outbox WHERE dedupe_key LIKE %s", (f"report-{w}-%",))
    assert "Organisations: 1" in body and "Daily reports: 2" in body and "last day: 5" in body

    # the next hour: still nothing new, nothing sent empty
    again = send_scheduled_enterprise_reports(panel_db=db, interval=at(DEC1 + timedelta(hours=1)))
    assert again["reports_sent"] == 0 and again["periods_waiting_for_source"] == 2
    assert one(sql, "SELECT count(*) FROM sent_reports") == 1

    # UsageReportWork catches up: 30 November's Exchange report (and 1 December's, not November's),
    # then its 03:20 run takes November's add-on report
    exchange_report(sql, orgs["Alpha Mail"], date(2026, 11, 30), 12)
    exchange_report(sql, orgs["Alpha Mail"], date(2026, 12, 1), 99)
    assert addon_usage_report(db, at(DEC1.replace(hour=3, minute=20)))["reports_taken"] == 1
    late = send_scheduled_enterprise_reports(panel_db=db, interval=at(DEC1.replace(hour=3, minute=45)))
    assert late["reports_sent"] == 2 and late["periods_waiting_for_source"] == 0 and late["emails_queued"] == 2
    assert next_runs(sql) == {**before, w: date(2026, 12, 7), ids["exchange_monthly"]: date(2027, 1, 1),
                              ids["addon_monthly"]: date(2027, 1, 1)}

    m, a, am = ids["exchange_monthly"], custs["alpha"], orgs["Alpha Mail"]
    filename, rows = attachment(sql, f"report-{m}-2026-11-01:it@alpha.example")
    assert filename == "exchange-usage-20261101-20261130.csv"
    assert rows[1:] == [  # 31 October and 1 December are not November
        [str(a), "Alpha, Ltd", str(am), "Alpha Mail", "2026-11-01", "", "10", "8", "1", "1", str(10 << 30), "0",
         "1000"],
        [str(a), "Alpha, Ltd", str(am), "Alpha Mail", "2026-11-30", "", "12", "10", "1", "1", str(12 << 30), "0",
         "1200"]]

    # the reseller's add-on report: its customers' lines only (Alpha is not the reseller's), the
    # cancelled add-on left out, money to the cent
    ad = ids["addon_monthly"]
    filename, rows = attachment(sql, f"report-{ad}-2026-11-01:noc@reseller.example")
    assert filename == "addon-usage-20261101-20261130.csv"
    assert rows == [list(reports.COLUMNS["addon_usage"]),
                    [str(g), "Gamma", "2026-11-01", "Archiving", "GBP", "1.50", "1", "2", "3.00"]]
    body = one(sql, "SELECT body_text FROM email_outbox WHERE dedupe_key LIKE %s", (f"report-{ad}-%",))
    assert "Add-on lines: 1" in body and "Amount (GBP): 3.00" in body
    assert sql("SELECT subject FROM email_outbox WHERE dedupe_key LIKE %s", (f"report-{ad}-%",)) == [
        ("Test Hosting add-on usage report for Reseller One: November 2026",)]

    # sent once: the next run has nothing due
    send_scheduled_enterprise_reports(panel_db=db, interval=at(DEC1.replace(hour=4, minute=45)))
    assert one(sql, "SELECT count(*) FROM sent_reports") == 3 and one(sql, "SELECT count(*) FROM email_outbox") == 3


def test_an_addon_usage_schedule_is_monthly(world, sql):
    import psycopg

    cust = world["customer"]("Alpha")
    with pytest.raises(psycopg.errors.CheckViolation, match="report_schedules_addon_usage_monthly_check"):
        world["schedule"]("addon_usage", "weekly", date(2026, 11, 30), ["it@alpha.example"], customer=cust)
