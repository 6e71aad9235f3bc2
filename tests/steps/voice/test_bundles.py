"""Voice bundles on the real panel DB: GroupActionWorkLync 2 (minutes per bundle and period, the
reset, over-use), ProvisioningWork 15 (per subscriber) and VoiceCurrentLimitSyncWork 1 (external refs).

Minutes are per started minute as BillingWork rates them: 61 s → 2, 60 s → 1, 0 s (unanswered) → 0.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta

import pendulum
import pytest

from panelflow.step import Interval
from panelflow.steps.voice.bundles import (process_call_bundles, update_sip_bundle_external_refs,
                                           update_sip_bundle_subscriber_usage)

TZ = "Europe/London"


def run_at(when: str) -> Interval:
    end = pendulum.parse(when, tz=TZ)
    return Interval(end - timedelta(minutes=5), end, TZ)


def at(when: str) -> datetime:
    return pendulum.parse(when, tz=TZ)


@pytest.fixture
def bundled(world, panel, sql):
    """acme's subscription has a 10-minute bundle and a company with alice and bob; globex has none."""
    platform = panel.platform()
    company = panel.company(platform, world["customer"]["acme"], world["subscription"]["acme"], "acme.test")
    subs = {"alice": panel.subscriber(company, "alice", ref="17"), "bob": panel.subscriber(company, "bob", ref="18")}
    bundle = panel.bundle(world["subscription"]["acme"], 10)

    def call(who: str | None, started: str, seconds: int, subscription: str = "acme", table: str = "sip_usage"):
        if table == "ocs_call_records":
            sql("INSERT INTO ocs_call_records (subscription_id, caller, destination, started_at, duration_seconds)"
                " VALUES (%s, 'sip:x@acme.test', '4420', %s, %s)", (world["subscription"][subscription], at(started),
                                                                     seconds))
            return
        sql("INSERT INTO sip_usage (subscription_id, sip_account, destination, started_at, duration_seconds,"
            " voice_subscriber_id) VALUES (%s, %s, '4420', %s, %s, %s)",
            (world["subscription"][subscription], f"{who}@acme.test", at(started), seconds, subs.get(who)))

    return {"bundle": bundle, "subs": subs, "call": call, "company": company}


def usage(sql):
    return {(r[0], r[1]): r[2:] for r in sql(
        "SELECT bundle_id, period_start, minutes_used, calls, over_limit, over_since, counted_at"
        " FROM voice_bundle_usage ORDER BY 1, 2")}


def test_minutes_are_counted_per_started_minute_from_sip_and_ocs_records(voice_db, bundled, sql):
    call = bundled["call"]
    call("alice", "2026-12-02T10:00", 61)                                  # 2 min
    call("bob", "2026-12-03T10:00", 60)                                    # 1 min
    call("alice", "2026-12-03T11:00", 0)                                   # unanswered: 0
    call(None, "2026-12-04T09:00", 125, table="ocs_call_records")          # 3 min (Lync)
    call("alice", "2026-11-30T23:59", 600)                                 # November: not December's
    call("alice", "2026-12-05T10:00", 600, subscription="globex")          # another subscription
    call("alice", "2026-12-10T10:00", 60)                                  # after the clock: not yet

    summary = process_call_bundles(voice_db, run_at("2026-12-06T12:00"))

    assert summary["bundle_periods"] == 1 and summary["periods_started"] == 1
    assert usage(sql) == {(bundled["bundle"], date(2026, 12, 1)): (6, 3, False, None, at("2026-12-06T12:00"))}


def test_over_use_is_flagged_once_found_and_a_rerun_changes_nothing(voice_db, bundled, sql):
    call = bundled["call"]
    call("alice", "2026-12-02T10:00", 600)                                 # 10 min: full, not over
    process_call_bundles(voice_db, run_at("2026-12-02T12:00"))
    assert usage(sql)[(bundled["bundle"], date(2026, 12, 1))][:3] == (10, 1, False)

    call("bob", "2026-12-03T10:00", 30)                                    # 11 min: over
    first = process_call_bundles(voice_db, run_at("2026-12-03T12:00"))
    rows = usage(sql)
    again = process_call_bundles(voice_db, run_at("2026-12-03T12:00"))    # a rerun of the same run
    assert first["bundle_periods_over_limit"] == 1 and again["periods_started"] == 0
    assert usage(sql) == rows == {(bundled["bundle"], date(2026, 12, 1)):
                                  (11, 2, True, at("2026-12-03T12:00"), at("2026-12-03T12:00"))}

    process_call_bundles(voice_db, run_at("2026-12-04T12:00"))             # still over: since the first finding
    assert usage(sql)[(bundled["bundle"], date(2026, 12, 1))][3] == at("2026-12-03T12:00")

    older = process_call_bundles(voice_db, run_at("2026-12-02T18:00"))     # a backfill with an older clock
    assert older["bundle_periods_counted_later_kept"] == 1
    assert usage(sql)[(bundled["bundle"], date(2026, 12, 1))][4] == at("2026-12-04T12:00")


def test_a_new_period_starts_from_zero_and_the_old_one_still_takes_late_records(voice_db, bundled, sql):
    call = bundled["call"]
    call("alice", "2026-12-31T23:00", 660)                                 # 11 min in December: over
    process_call_bundles(voice_db, run_at("2026-12-31T23:55"))

    summary = process_call_bundles(voice_db, run_at("2027-01-01T00:05"))   # midnight in London: the reset
    assert summary["periods_started"] == 1
    rows = usage(sql)
    assert rows[(bundled["bundle"], date(2027, 1, 1))][:3] == (0, 0, False)
    assert rows[(bundled["bundle"], date(2026, 12, 1))][:3] == (11, 1, True)

    call("bob", "2026-12-31T23:58", 60)                                    # imported late, still December's
    call("bob", "2027-01-01T00:01", 60)
    process_call_bundles(voice_db, run_at("2027-01-01T06:00"))
    rows = usage(sql)
    assert rows[(bundled["bundle"], date(2026, 12, 1))][:2] == (12, 2)
    assert rows[(bundled["bundle"], date(2027, 1, 1))][:2] == (1, 1)


def test_cancelled_bundles_and_subscriptions_are_not_counted(voice_db, bundled, world, sql):
    bundled["call"]("alice", "2026-12-02T10:00", 60)
    sql("UPDATE voice_bundles SET status = 'cancelled'")
    assert process_call_bundles(voice_db, run_at("2026-12-06T12:00"))["bundle_periods"] == 0
    sql("UPDATE voice_bundles SET status = 'active'")
    sql("UPDATE subscriptions SET status = 'cancelled' WHERE id = %s", (world["subscription"]["acme"],))
    assert process_call_bundles(voice_db, run_at("2026-12-06T12:00"))["bundle_periods"] == 0
    assert usage(sql) == {}


def test_subscriber_usage_per_bundle_and_period_then_its_external_refs(voice_db, bundled, panel, sql):
    call, subs = bundled["call"], bundled["subs"]
    call("alice", "2026-12-02T10:00", 61)
    call("alice", "2026-12-02T11:00", 1)
    call("bob", "2026-12-03T10:00", 0)
    gone = panel.subscriber(bundled["company"], "carol", status="deleted", at=at("2026-11-20T00:00"))

    first = update_sip_bundle_subscriber_usage(voice_db, run_at("2026-12-06T12:00"))
    again = update_sip_bundle_subscriber_usage(voice_db, run_at("2026-12-06T12:00"))

    rows = sql("SELECT subscriber_id, period_start, minutes, calls, external_ref FROM sip_bundle_subscriber_usage"
               " ORDER BY subscriber_id")
    assert rows == [(subs["alice"], date(2026, 12, 1), 3, 2, None), (subs["bob"], date(2026, 12, 1), 0, 0, None)]
    assert gone not in [r[0] for r in rows]                                # deleted before the period
    assert first["subscriber_periods_started"] == 2 and again["subscriber_periods_started"] == 0

    refs = update_sip_bundle_external_refs(voice_db, run_at("2026-12-06T12:05"))
    assert refs["external_refs_updated"] == 2
    assert update_sip_bundle_external_refs(voice_db, run_at("2026-12-06T12:05"))["external_refs_updated"] == 0
    assert sql("SELECT subscriber_id, external_ref FROM sip_bundle_subscriber_usage ORDER BY 1") == [
        (subs["alice"], "17"), (subs["bob"], "18")]
