"""VoiceCurrentLimitSyncWork 4 on the real panel DB: orphan records of SIP subscriptions removed after
the retention, in bounded batches, and nothing else."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from panelflow.step import Interval
from panelflow.steps.voice.cleanup import delete_orphan_sip_records

CLOCK = datetime(2026, 12, 7, 10, 0, tzinfo=timezone.utc)
RUN = Interval(CLOCK - timedelta(minutes=15), CLOCK, "UTC")
OLD = CLOCK - timedelta(days=40)
RECENT = CLOCK - timedelta(days=5)


@pytest.fixture
def orphans(world, panel, sql):
    platform = panel.platform()
    acme = panel.company(platform, world["customer"]["acme"], world["subscription"]["acme"], "acme.test")
    gone = panel.company(platform, world["customer"]["globex"], None, "globex.test", status="deleted", at=OLD)
    ids = {"acme": acme, "gone": gone,
           "live": panel.subscriber(acme, "live"),
           "old": panel.subscriber(acme, "old", status="deleted", at=OLD),
           "recent": panel.subscriber(acme, "recent", status="deleted", at=RECENT),
           "gone_user": panel.subscriber(gone, "user", status="deleted", at=OLD)}
    sql("INSERT INTO voice_numbers (platform_id, number, subscriber_id, assigned_at) VALUES (%s, '4411300001', %s, %s)",
        (platform, ids["old"], OLD))
    ids["bundle"] = panel.bundle(world["subscription"]["acme"], 100)
    ids["cancelled"] = panel.bundle(world["subscription"]["acme"], 100, status="cancelled")
    for bundle, subscriber, counted in ((ids["bundle"], ids["live"], OLD),        # live bundle and subscriber: kept
                                        (ids["cancelled"], ids["live"], OLD),     # cancelled bundle, old: orphan
                                        (ids["cancelled"], ids["live"], RECENT)): # cancelled, recent: kept
        sql("INSERT INTO sip_bundle_subscriber_usage (bundle_id, subscriber_id, period_start, minutes, calls,"
            " counted_at) VALUES (%s, %s, date_trunc('month', %s::timestamptz AT TIME ZONE 'UTC'), 1, 1, %s)",
            (bundle, subscriber, counted, counted))
    sql("INSERT INTO sip_usage (subscription_id, sip_account, destination, started_at, duration_seconds,"
        " voice_subscriber_id) VALUES (%s, 'old@acme.test', '44', %s, 60, %s)",
        (world["subscription"]["acme"], OLD, ids["old"]))
    return ids


def test_orphans_past_the_retention_go_and_billed_history_stays(voice_db, orphans, sql):
    summary = delete_orphan_sip_records(voice_db, RUN)

    assert (summary["bundle_subscriber_usage_deleted"], summary["subscribers_deleted"],
            summary["companies_deleted"]) == (1, 2, 1)
    assert sorted(r[0] for r in sql("SELECT username FROM voice_subscribers")) == ["live", "recent"]
    assert [r[0] for r in sql("SELECT sip_domain FROM voice_companies")] == ["acme.test"]
    assert sql("SELECT count(*) FROM voice_numbers") == [(0,)]
    assert sql("SELECT count(*) FROM sip_bundle_subscriber_usage") == [(2,)]
    assert sql("SELECT count(*) FROM sip_usage") == [(1,)]                      # billed calls are history
    again = delete_orphan_sip_records(voice_db, RUN)
    assert again["subscribers_deleted"] == again["companies_deleted"] == 0


def test_deletes_are_bounded_per_run(voice_db, orphans, panel, sql):
    for n in range(7):
        panel.subscriber(orphans["acme"], f"gone{n}", status="deleted", at=OLD)
    params = {"orphan_batch_size": 2, "orphan_max_batches": 2}

    first = delete_orphan_sip_records(voice_db, RUN, params)
    assert first["subscribers_deleted"] == 4 and first["orphans_left"] >= 1
    second = delete_orphan_sip_records(voice_db, RUN, params)
    third = delete_orphan_sip_records(voice_db, RUN, params)
    assert first["subscribers_deleted"] + second["subscribers_deleted"] + third["subscribers_deleted"] == 9
    assert sorted(r[0] for r in sql("SELECT username FROM voice_subscribers")) == ["live", "recent"]


def test_the_retention_is_a_parameter(voice_db, orphans, sql):
    delete_orphan_sip_records(voice_db, RUN, {"orphan_retention_days": 1})
    assert [r[0] for r in sql("SELECT username FROM voice_subscribers")] == ["live"]
