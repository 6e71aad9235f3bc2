"""QuotaOverUsedWork and OverusageResourceNotification on the real panel DB: over-use episodes
opened, kept, resolved; the recheck bit set and cleared; voice bundle notices at 80 % and 100 %
exactly once; bad records reported and skipped while the rest is processed."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from decimal import Decimal as D
from zoneinfo import ZoneInfo

import pytest

from panelflow.step import Interval
from panelflow.steps.quotas import (
    flag_subscriptions_for_quota_recheck,
    send_voice_bundle_overusage_notices,
    sync_quota_overuse,
)

TZ = "Europe/London"
UTC = ZoneInfo("UTC")
OWN_TABLES = ("report_schedules", "sent_reports", "subscription_quotas", "resource_usage_samples", "quota_overuse",
              "subscription_quota_rechecks", "voice_bundles", "voice_bundle_notices")


def at(clock: datetime) -> Interval:
    """A QuotaOverUsedWork / OverusageResourceNotification run: a trigger timetable, zero-length interval."""
    return Interval(clock, clock, TZ)


@pytest.fixture
def world(panel_db, sql):
    sql("TRUNCATE " + ", ".join(OWN_TABLES) + " RESTART IDENTITY CASCADE")
    sql("INSERT INTO currencies VALUES ('GBP', 'Pound sterling', 2)")
    sql("INSERT INTO providers (name, billing_email, currency) VALUES ('Test Hosting', 'billing@test.example', 'GBP')")

    def customer(name, email="it@test.example", status="active"):
        return sql("INSERT INTO customers (provider_id, name, email, country, currency, status)"
                   " VALUES (1, %s, %s, 'GB', 'GBP', %s) RETURNING id", (name, email, status))[0][0]

    def subscription(cust, plan="Hosting", status="active"):
        return sql("INSERT INTO subscriptions (customer_id, plan, price, currency, billing_cycle, next_bill_date,"
                   " started_on, status) VALUES (%s, %s, 10, 'GBP', 'monthly', '2026-12-01', '2026-01-01', %s)"
                   " RETURNING id", (cust, plan, status))[0][0]

    return {"customer": customer, "subscription": subscription, "db": panel_db}


# --- quota over-use -----------------------------------------------------------------------------

T1 = datetime(2026, 11, 21, 10, 21, tzinfo=UTC)
T2, T3, T4 = T1 + timedelta(minutes=30), T1 + timedelta(minutes=60), T1 + timedelta(minutes=90)


def quota(sql, sub, resource, limit):
    sql("INSERT INTO subscription_quotas (subscription_id, resource, quota_limit) VALUES (%s, %s, %s)",
        (sub, resource, limit))


def sample(sql, sub, resource, when, used):
    sql("INSERT INTO resource_usage_samples (subscription_id, resource, sampled_at, used) VALUES (%s, %s, %s, %s)",
        (sub, resource, when, used))


def episodes(sql):
    return sql("SELECT id, subscription_id, resource, quota_limit, used, peak_used, opened_at, last_seen_at,"
               " resolved_at, resolution, status FROM quota_overuse ORDER BY id")


def flags(sql):
    return sql("SELECT subscription_id, reason FROM subscription_quota_rechecks ORDER BY subscription_id")


def test_overuse_opened_kept_resolved_and_the_recheck_bit(world, sql):
    db, sub, cust = world["db"], world["subscription"], world["customer"]
    c = cust("Alpha Ltd")
    over, under, mixed, stale, unlimited = (sub(c) for _ in range(5))
    cancelled = sub(c, status="cancelled")

    quota(sql, over, "mailbox_storage", 2048)
    sample(sql, over, "mailbox_storage", T1 - timedelta(hours=5), 1000)
    sample(sql, over, "mailbox_storage", T1 - timedelta(minutes=10), 2100)  # the latest at T1: over
    sample(sql, over, "mailbox_storage", T1 + timedelta(minutes=1), 10)     # after the clock: not yet
    quota(sql, under, "disk_space", 1000)
    sample(sql, under, "disk_space", T1 - timedelta(hours=1), 999)
    quota(sql, under, "users", 10)
    sample(sql, under, "users", T1 - timedelta(hours=1), 10)                 # at the quota: full, not over
    quota(sql, mixed, "flux_capacitor", 1)                                   # unknown resource: reported
    sample(sql, mixed, "flux_capacitor", T1 - timedelta(hours=1), 5)
    quota(sql, mixed, "mailboxes", 5)                                        # … its other quota still checked
    sample(sql, mixed, "mailboxes", T1 - timedelta(hours=1), 6)
    quota(sql, stale, "disk_space", 100)
    sample(sql, stale, "disk_space", T1 - timedelta(days=3), 500)            # too old to say anything
    quota(sql, unlimited, "bandwidth", None)
    sample(sql, unlimited, "bandwidth", T1 - timedelta(hours=1), 10 ** 9)
    quota(sql, cancelled, "disk_space", 1)
    sample(sql, cancelled, "disk_space", T1 - timedelta(hours=1), 5)
    sql("INSERT INTO subscription_quota_rechecks VALUES (%s, 'panel', %s)", (under, T1))  # someone else's flag

    summary = sync_quota_overuse(panel_db=db, interval=at(T1))

    assert summary["quotas_checked"] == 6 and summary["quotas_unlimited"] == 1
    assert summary["quotas_not_measured"] == 1 and summary["quotas_over"] == 2
    assert summary["overuse_opened"] == 2 and summary["overuse_open"] == 2
    assert summary["skipped"] == {"unknown resource": 1}
    assert summary["skipped_examples"] == [f"subscription {mixed}: resource 'flux_capacitor': unknown resource"]
    assert episodes(sql) == [
        (1, over, "mailbox_storage", D(2048), D(2100), D(2100), T1, T1, None, None, "open"),
        (2, mixed, "mailboxes", D(5), D(6), D(6), T1, T1, None, None, "open")]

    assert flag_subscriptions_for_quota_recheck(panel_db=db, interval=at(T1)) == {
        "subscriptions_over_quota": 2, "flagged": 2, "already_flagged": 0, "cleared": 0}
    assert flags(sql) == [(over, "quota_overuse"), (under, "panel"), (mixed, "quota_overuse")]

    # still over, higher: the same record, brought up to date
    sample(sql, over, "mailbox_storage", T2 - timedelta(minutes=5), 2300)
    summary = sync_quota_overuse(panel_db=db, interval=at(T2))
    assert summary["overuse_opened"] == 0 and summary["overuse_still_open"] == 2
    assert episodes(sql) == [
        (1, over, "mailbox_storage", D(2048), D(2300), D(2300), T1, T2, None, None, "open"),
        (2, mixed, "mailboxes", D(5), D(6), D(6), T1, T2, None, None, "open")]
    # the same run again (a retry): nothing changes
    before = episodes(sql)
    sync_quota_overuse(panel_db=db, interval=at(T2))
    assert episodes(sql) == before
    assert flag_subscriptions_for_quota_recheck(panel_db=db, interval=at(T2))["already_flagged"] == 2

    # back under (peak kept), and a quota removed: both resolved; our flags cleared, the panel's kept
    sample(sql, over, "mailbox_storage", T3 - timedelta(minutes=5), 1500)
    sql("DELETE FROM subscription_quotas WHERE subscription_id = %s AND resource = 'mailboxes'", (mixed,))
    summary = sync_quota_overuse(panel_db=db, interval=at(T3))
    assert summary["overuse_resolved_under_quota"] == 1 and summary["overuse_resolved_quota_removed"] == 1
    assert summary["overuse_open"] == 0
    assert episodes(sql) == [
        (1, over, "mailbox_storage", D(2048), D(1500), D(2300), T1, T2, T3, "under_quota", "resolved"),
        (2, mixed, "mailboxes", D(5), D(6), D(6), T1, T2, T3, "quota_removed", "resolved")]
    assert flag_subscriptions_for_quota_recheck(panel_db=db, interval=at(T3)) == {
        "subscriptions_over_quota": 0, "flagged": 0, "already_flagged": 0, "cleared": 2}
    assert flags(sql) == [(under, "panel")]

    # a replay of an older run (T2's samples were over) reopens nothing a later run resolved
    sync_quota_overuse(panel_db=db, interval=at(T2))
    assert episodes(sql)[0][-2:] == ("under_quota", "resolved") and len(episodes(sql)) == 2

    # over again: a new episode; the old one stays resolved
    sample(sql, over, "mailbox_storage", T4 - timedelta(minutes=5), 2500)
    assert sync_quota_overuse(panel_db=db, interval=at(T4))["overuse_opened"] == 1
    assert [e[1:3] + e[-3:] for e in episodes(sql)] == [
        (over, "mailbox_storage", T3, "under_quota", "resolved"),
        (mixed, "mailboxes", T3, "quota_removed", "resolved"),
        (over, "mailbox_storage", None, None, "open")]
    assert flag_subscriptions_for_quota_recheck(panel_db=db, interval=at(T4))["flagged"] == 1


def test_unmeasured_stays_open_and_cancelled_resolves(world, sql):
    db, sub, cust = world["db"], world["subscription"], world["customer"]
    c = cust("Beta Ltd")
    a, b = sub(c), sub(c)
    for s in (a, b):
        quota(sql, s, "disk_space", 100)
        sample(sql, s, "disk_space", T1 - timedelta(minutes=1), 150)
    assert sync_quota_overuse(panel_db=db, interval=at(T1))["overuse_opened"] == 2

    # three days on, no new samples: not measured, so neither resolved nor refreshed
    later = T1 + timedelta(days=3)
    sql("UPDATE subscriptions SET status = 'cancelled' WHERE id = %s", (b,))
    summary = sync_quota_overuse(panel_db=db, interval=at(later))
    assert summary["quotas_not_measured"] == 1 and summary["overuse_still_open"] == 0
    assert sql("SELECT subscription_id, last_seen_at, resolved_at, resolution FROM quota_overuse ORDER BY id") == [
        (a, T1, None, None), (b, T1, later, "subscription_cancelled")]


# --- voice bundles ------------------------------------------------------------------------------

AUG20 = datetime(2026, 8, 20, 12, 50, tzinfo=ZoneInfo(TZ))  # BST: 11:50 UTC


def call(sql, table, sub, started_at, seconds):
    column = "caller" if table == "ocs_call_records" else "sip_account"
    sql(f"INSERT INTO {table} (subscription_id, {column}, destination, started_at, duration_seconds)"
        " VALUES (%s, 'user', '441632960000', %s, %s)", (sub, started_at, seconds))


def bundle(sql, sub, minutes, status="active"):
    return sql("INSERT INTO voice_bundles (subscription_id, name, minutes_per_month, status) VALUES (%s, %s, %s, %s)"
               " RETURNING id", (sub, f"UK {minutes}", minutes, status))[0][0]


def notices(sql):
    return sql("SELECT bundle_id, month, threshold, minutes_used, minutes_included, outbox_key"
               " FROM voice_bundle_notices ORDER BY bundle_id, month, threshold")


def outbox(sql):
    return sql("SELECT dedupe_key, to_address, subject FROM email_outbox ORDER BY id")


def test_voice_bundle_notices_at_80_and_100_percent_once(world, sql):
    db, sub, cust = world["db"], world["subscription"], world["customer"]
    alpha = cust("Alpha Ltd", "it@alpha.example")
    s1 = sub(alpha, "Lync Enterprise")
    b1 = bundle(sql, s1, 100)
    # 1 August 00:30 BST is 31 July 23:30 UTC: August's; 31 July 23:30 BST is not
    call(sql, "ocs_call_records", s1, datetime(2026, 7, 31, 23, 30, tzinfo=UTC), 60)      # 1 min
    call(sql, "ocs_call_records", s1, datetime(2026, 7, 31, 22, 30, tzinfo=UTC), 600)     # July: not counted
    for i in range(30):
        call(sql, "ocs_call_records", s1, datetime(2026, 8, 2, 9, i, tzinfo=UTC), 61)     # 30 × 2 min
    for i in range(18):
        call(sql, "sip_usage", s1, datetime(2026, 8, 3, 9, i, tzinfo=UTC), 59)            # 18 × 1 min
    call(sql, "sip_usage", s1, datetime(2026, 8, 4, 9, 0, tzinfo=UTC), 0)                 # unanswered
    call(sql, "ocs_call_records", s1, AUG20 + timedelta(minutes=5), 3000)                 # after the clock
    # another customer's bundle on 10 minutes jumps straight past 100 %: one message, both recorded
    beta = cust("Beta Ltd", "it@beta.example")
    s2 = sub(beta, "SIP trunk")
    b2 = bundle(sql, s2, 10)
    call(sql, "sip_usage", s2, datetime(2026, 8, 5, 9, 0, tzinfo=UTC), 12 * 60)
    # a cancelled bundle is not watched
    bundle(sql, sub(beta), 1, status="cancelled")

    # 79 minutes of 100: nothing for alpha
    summary = send_voice_bundle_overusage_notices(panel_db=db, interval=at(AUG20))
    assert summary["bundle_months_checked"] == 2 and summary["notices"] == 2 and summary["emails_queued"] == 1
    key2 = f"voice-bundle-{b2}-2026-08-100"
    assert notices(sql) == [(b2, date(2026, 8, 1), 80, 12, 10, None), (b2, date(2026, 8, 1), 100, 12, 10, key2)]
    assert outbox(sql) == [(key2, "it@beta.example", "Your voice bundle UK 10 is used up for August 2026")]

    # one more started minute: 80 % → one notice
    call(sql, "sip_usage", s1, datetime(2026, 8, 6, 9, 0, tzinfo=UTC), 1)
    summary = send_voice_bundle_overusage_notices(panel_db=db, interval=at(AUG20))
    assert summary["notices"] == 1 and summary["thresholds_already_noticed"] == 2
    key80 = f"voice-bundle-{b1}-2026-08-80"
    assert notices(sql)[0] == (b1, date(2026, 8, 1), 80, 80, 100, key80)
    assert outbox(sql)[-1] == (key80, "it@alpha.example", "You have used 80% of your voice bundle UK 100 for August 2026")
    body = sql("SELECT body_text FROM email_outbox WHERE dedupe_key = %s", (key80,))[0][0]
    assert "80 of 100 minutes, 20 left" in body and "subscription %d" % s1 in body
    # rerun: nothing
    assert send_voice_bundle_overusage_notices(panel_db=db, interval=at(AUG20))["notices"] == 0

    # 99 %: nothing; 100 %: one more
    call(sql, "ocs_call_records", s1, datetime(2026, 8, 7, 9, 0, tzinfo=UTC), 19 * 60)
    assert send_voice_bundle_overusage_notices(panel_db=db, interval=at(AUG20))["notices"] == 0
    call(sql, "ocs_call_records", s1, datetime(2026, 8, 8, 9, 0, tzinfo=UTC), 1)
    later = AUG20 + timedelta(minutes=2)  # still before the 50-minute call started at AUG20 + 5 min
    assert send_voice_bundle_overusage_notices(panel_db=db, interval=at(later))["emails_queued"] == 1
    assert send_voice_bundle_overusage_notices(panel_db=db, interval=at(later))["notices"] == 0
    assert [n[:4] for n in notices(sql) if n[0] == b1] == [(b1, date(2026, 8, 1), 80, 80),
                                                          (b1, date(2026, 8, 1), 100, 100)]
    assert [o[0] for o in outbox(sql)] == [key2, key80, f"voice-bundle-{b1}-2026-08-100"]


def test_voice_notice_bad_address_reported_then_sent_and_late_records(world, sql):
    db, sub, cust = world["db"], world["subscription"], world["customer"]
    nomail = cust("No Mail Ltd", None)
    s1 = sub(nomail)
    b1 = bundle(sql, s1, 10)
    call(sql, "ocs_call_records", s1, datetime(2026, 8, 31, 21, 0, tzinfo=UTC), 8 * 60)  # 80 % of August
    ok = cust("Fine Ltd", "ops@fine.example")
    s2 = sub(ok)
    b2 = bundle(sql, s2, 10)
    call(sql, "sip_usage", s2, datetime(2026, 8, 31, 21, 0, tzinfo=UTC), 9 * 60)

    # 00:50 on 1 September: August is still checked (records of its last hours arrive late)
    sep1 = datetime(2026, 9, 1, 0, 50, tzinfo=ZoneInfo(TZ))
    summary = send_voice_bundle_overusage_notices(panel_db=db, interval=at(sep1))
    assert summary["bundle_months_checked"] == 4  # two bundles × August and September
    assert summary["skipped"] == {"customer has no usable e-mail address": 1}
    assert summary["skipped_examples"] == [
        f"customer {nomail} (no address), bundle {b1}, 2026-08, 80%: customer has no usable e-mail address"]
    assert notices(sql) == [(b2, date(2026, 8, 1), 80, 9, 10, f"voice-bundle-{b2}-2026-08-80")]

    # a late record of 31 August 23:30 BST arrives: August reaches 100 % for b2
    call(sql, "sip_usage", s2, datetime(2026, 8, 31, 22, 30, tzinfo=UTC), 60)
    sql("UPDATE customers SET email = 'accounts@nomail.example' WHERE id = %s", (nomail,))
    summary = send_voice_bundle_overusage_notices(panel_db=db, interval=at(sep1 + timedelta(hours=1)))
    assert summary["skipped"] == {} and summary["emails_queued"] == 2
    assert [n[:3] for n in notices(sql)] == [(b1, date(2026, 8, 1), 80), (b2, date(2026, 8, 1), 80),
                                            (b2, date(2026, 8, 1), 100)]
    assert outbox(sql)[-2:] == [
        (f"voice-bundle-{b1}-2026-08-80", "accounts@nomail.example",
         "You have used 80% of your voice bundle UK 10 for August 2026"),
        (f"voice-bundle-{b2}-2026-08-100", "ops@fine.example", "Your voice bundle UK 10 is used up for August 2026")]
    # a day into September, August is no longer looked at
    assert send_voice_bundle_overusage_notices(panel_db=db, interval=at(sep1 + timedelta(days=1)))[
        "bundle_months_checked"] == 2
