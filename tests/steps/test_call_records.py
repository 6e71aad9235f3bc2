"""CallDataProcessWork 1: both platforms' importers run, each whatever the other does."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from panelflow.step import Interval, PartsFailed
from panelflow.steps.call_records import process_call_records

END = datetime(2026, 11, 3, 10, 6, tzinfo=timezone.utc)
INTERVAL = Interval(END - timedelta(minutes=15), END, "Europe/London")


def test_nothing_configured_is_two_summaries_not_a_failure(panel_db, sql):
    sql("TRUNCATE sip_platforms, lync_pools RESTART IDENTITY CASCADE")
    summary = process_call_records(panel_db, INTERVAL, {}, None)
    assert set(summary) == {"sip", "lync"}
    assert "no SIP platform configured" in str(summary["sip"])


def test_one_platform_failing_still_imports_the_other(panel_db, monkeypatch):
    import panelflow.steps.lync.calls as lync
    import panelflow.steps.voice.calls as voice

    ran = []

    def sip_down(panel_db, interval, params=None, log=None):
        raise ConnectionError("SIP platform DB went away")

    def lync_ok(panel_db, interval, params=None, log=None):
        ran.append(interval)
        return {"calls_imported": 3}

    monkeypatch.setattr(voice, "import_sip_call_records", sip_down)
    monkeypatch.setattr(lync, "import_lync_call_records", lync_ok)
    with pytest.raises(PartsFailed, match="sip: ConnectionError: SIP platform DB went away"):
        process_call_records(panel_db, INTERVAL, {}, None)
    assert ran == [INTERVAL]
