"""The step operator's inputs, and the pools command against the real metadata DB."""

from __future__ import annotations

from types import SimpleNamespace

import pendulum
import pytest

from panelflow.catalog import load_catalog
from panelflow.operators import StepOperator, run_interval


def test_the_clock_is_the_data_interval():
    start, end = pendulum.datetime(2026, 11, 19, 1, 30, tz="UTC"), pendulum.datetime(2026, 11, 20, 1, 30, tz="UTC")
    got = run_interval({"data_interval_start": start, "data_interval_end": end, "dag_run": None})
    assert (got.start, got.end) == (start, end)


def test_a_manual_run_without_interval_uses_its_run_after():
    """Fixed when the run is created: a retry of the same run sees the same clock."""
    after = pendulum.datetime(2026, 11, 20, 9, 14, 3, tz="UTC")
    got = run_interval({"data_interval_start": None, "data_interval_end": None,
                        "dag_run": SimpleNamespace(run_after=after)})
    assert got.start == got.end == after


def test_step_gets_only_what_it_asks_for(monkeypatch):
    seen = {}

    def fake_step(interval, params):
        seen.update(interval=interval, params=params)
        return {"rows": 3}

    monkeypatch.setattr("panelflow.operators.resolve", lambda path: fake_step)
    op = StepOperator(task_id="t", run="panelflow.steps.sessions.expire_sessions")
    at = pendulum.datetime(2026, 11, 20, tz="UTC")
    out = op.execute({"data_interval_start": at, "data_interval_end": at, "params": {"days": 3}})
    assert out == {"rows": 3} and seen["interval"].end == at and seen["params"] == {"days": 3}


def test_step_asking_for_an_unknown_input_fails_clearly(monkeypatch):
    monkeypatch.setattr("panelflow.operators.resolve", lambda path: (lambda interval, graph_client: None))
    op = StepOperator(task_id="t", run="panelflow.steps.x.y")
    with pytest.raises(TypeError, match=r"asks for \['graph_client'\]"):
        op.execute({"data_interval_start": None, "data_interval_end": pendulum.now("UTC")})


def test_pools_sync_creates_updates_and_removes_only_its_own(airflow_db):
    from airflow.models.pool import Pool

    from panelflow.pools import sync_pools

    Pool.create_or_update_pool("hand_made", 3, "made by an operator", False)
    Pool.create_or_update_pool("old_group", 2, "panelflow run group: retired", False)
    pools = load_catalog().pools()
    first = sync_pools(pools)
    assert set(first["created"]) | set(first["updated"]) | set(first["unchanged"]) == set(pools)
    assert "old_group" in first["removed"]
    assert Pool.get_pool("hand_made").slots == 3 and Pool.get_pool("old_group") is None
    assert Pool.get_pool("group_actions").slots == pools["group_actions"]["slots"]
    # a changed slot count is updated; a second sync changes nothing
    changed = {**pools, "billing": {**pools["billing"], "slots": 7}}
    assert sync_pools(changed)["updated"] == ["billing"] and Pool.get_pool("billing").slots == 7
    again = sync_pools(changed)
    assert again["created"] == again["updated"] == again["removed"] == []
