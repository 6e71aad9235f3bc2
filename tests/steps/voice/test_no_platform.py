"""The voice threads on a panel without SIP (``make run``'s demo data): every step succeeds and says
"no SIP platform configured" — nothing is tried, nothing fails."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from panelflow.step import Interval
from panelflow.steps.voice.bundles import update_sip_bundle_external_refs, update_sip_bundle_subscriber_usage
from panelflow.steps.voice.calls import import_sip_call_records
from panelflow.steps.voice.cleanup import delete_orphan_sip_records
from panelflow.steps.voice.contracts import execute_sip_contracts
from panelflow.steps.voice.jobs import process_sip_group_actions
from panelflow.steps.voice.sync import sync_voice_companies
from panelflow.steps.voice.usage import sync_company_sip_usage, sync_subscriber_sip_usage

RUN = Interval(datetime(2026, 12, 7, 10, 0, tzinfo=timezone.utc), datetime(2026, 12, 7, 10, 15, tzinfo=timezone.utc),
               "Europe/London")
STEPS = [sync_voice_companies, update_sip_bundle_external_refs, sync_subscriber_sip_usage, sync_company_sip_usage,
         delete_orphan_sip_records, process_sip_group_actions, import_sip_call_records,
         update_sip_bundle_subscriber_usage, execute_sip_contracts]


@pytest.mark.parametrize("step", STEPS, ids=[s.__name__ for s in STEPS])
def test_no_sip_platform_is_a_green_run_that_says_so(voice_db, step):
    summary = step(voice_db, RUN)
    assert summary["note"] == "no SIP platform configured"
    assert summary["skipped"] == {}


def test_a_disabled_platform_counts_as_none(voice_db, panel):
    panel.platform(enabled=False)
    summary = import_sip_call_records(voice_db, RUN)
    assert summary["note"] == "no SIP platform configured"
    assert summary["records_imported"] == 0
