"""Threads Manager overrides (Update Time Interval, Enable Logging) as the DAG factory applies them.

The Variable is given as ``AIRFLOW_VAR_PANELFLOW_OVERRIDES``: the same ``airflow.sdk.Variable``
read the dag-processor makes, answered here by Airflow's environment secrets backend instead of
the metadata DB. The live path (page → Variable in the metadata DB → dag-processor → scheduler's
next run) is tests/manager/test_threads_manager.py.
"""

from __future__ import annotations

import json
import logging

import pytest
from airflow.serialization.encoders import coerce_to_core_timetable

from panelflow.catalog import load_catalog
from panelflow.factory import build_dags
from panelflow.operators import StepOperator
from panelflow.overrides import OverrideError, ThreadOverride, parse, validate_schedule


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


def set_overrides(monkeypatch, value) -> None:
    monkeypatch.setenv("AIRFLOW_VAR_PANELFLOW_OVERRIDES", value if isinstance(value, str) else json.dumps(value))


def summary(dag) -> str:
    return coerce_to_core_timetable(dag.timetable).summary


def test_an_interval_override_replaces_the_catalog_schedule_of_that_thread_only(catalog, monkeypatch):
    before = build_dags(catalog)
    set_overrides(monkeypatch, {"sessions_mgt_work": {"schedule": {"kind": "periodic", "every": 10, "align_to": 3}}})
    after = build_dags(catalog)
    assert summary(before["sessions_mgt_work"]) == "7-59/15 * * * *"
    assert summary(after["sessions_mgt_work"]) == "3-59/10 * * * *"
    assert "every 10 min, aligned at :03 (Threads Manager override; catalog: every 15 min, aligned at :07)" \
        in after["sessions_mgt_work"].doc_md
    changed = {d for d in after if summary(after[d]) != summary(before[d]) or after[d].doc_md != before[d].doc_md}
    assert changed == {"sessions_mgt_work"}


def test_fixed_times_interval_and_manual_overrides(catalog, monkeypatch):
    set_overrides(monkeypatch, {
        "azure_rate_work": {"schedule": {"kind": "fixed", "at": ["15:20", "03:20"]}},
        "domain_verification": {"schedule": {"kind": "interval", "hours": 6}},
        "monitoring_work": {"schedule": {"kind": "manual"}},
    })
    dags = build_dags(catalog)
    azure = dags["azure_rate_work"].timetable
    assert summary(dags["azure_rate_work"]) == "20 3 * * *, 20 15 * * *"
    assert {t.timezone for t in azure.timetables} == {"Europe/London"}  # the catalog's (system) time zone
    assert "at 03:20 and 15:20 Europe/London" in dags["azure_rate_work"].doc_md
    assert summary(dags["domain_verification"]) == "6:00:00" and "every 6 h" in dags["domain_verification"].doc_md
    assert summary(dags["monitoring_work"]) == "None"  # manual: trigger only


def test_a_period_owning_thread_keeps_its_data_interval(catalog):
    billing = catalog.thread("BillingWork")
    moved = validate_schedule(billing, {"kind": "fixed", "at": ["02:15"]}, "Europe/London")
    assert moved.data_interval is True and moved.timezone == "Europe/London"
    with pytest.raises(OverrideError, match="data_interval: true needs exactly one run-at time"):
        validate_schedule(billing, {"kind": "fixed", "at": ["02:15", "14:15"]}, "Europe/London")
    assert validate_schedule(billing, {"kind": "fixed", "at": ["02:15", "14:15"], "data_interval": False}).at == \
        ["02:15", "14:15"]


@pytest.mark.parametrize(("thread", "value", "message"), [
    ("SessionsMgtWork", {"kind": "periodic", "every": 90}, "field schedule.every: Input should be less than or equal to 60"),
    ("SessionsMgtWork", {"kind": "periodic", "every": 5, "align_to": 5}, "align_to (5) must be smaller than every (5)"),
    ("SessionsMgtWork", {"kind": "fixed", "at": ["25:00"]}, "bad run-at time '25:00'"),
    ("SessionsMgtWork", {"kind": "fixed", "at": ["03:00"], "timezone": "Mars/Olympus"}, "unknown time zone 'Mars/Olympus'"),
    ("SessionsMgtWork", {"kind": "interval"}, "an interval needs hours or days greater than 0"),
    ("SessionsMgtWork", {"kind": "periodic", "every": 5, "cron": "* * * * *"}, "field schedule.cron: Extra inputs are not permitted"),
    ("SessionsMgtWork", {"kind": "daemon", "queue": "group_actions.sip"}, "schedule.kind: must be one of periodic, interval, fixed, manual"),
    ("SessionsMgtWork", "every 5 minutes", "must be an object"),
    ("GroupActionWorkSIP", {"kind": "periodic", "every": 5}, "is a daemon"),
])
def test_a_bad_override_is_refused_with_the_thread_and_field(catalog, thread, value, message):
    with pytest.raises(OverrideError) as err:
        validate_schedule(catalog.thread(thread), value, catalog.settings.timezone)
    assert message in str(err.value) and f"thread {thread}" in str(err.value)


def test_a_bad_stored_value_is_ignored_with_a_warning_and_never_breaks_the_dags(catalog, monkeypatch, caplog):
    set_overrides(monkeypatch, {
        "sessions_mgt_work": {"schedule": {"kind": "periodic", "every": 90}},   # refused by the catalog's model
        "monitoring_work": {"schedule": {"kind": "periodic", "every": 20, "align_to": 4}},  # fine
        "no_such_thread": {"verbose_logging": True},
        "domain_verification": "fast please",
        "billing_work": {"schedule": {"kind": "periodic", "every": 5}, "colour": "red"},
    })
    with caplog.at_level(logging.WARNING, logger="panelflow.overrides"):
        dags = build_dags(catalog)
    assert len(dags) == len(catalog.live_threads)
    assert summary(dags["sessions_mgt_work"]) == "7-59/15 * * * *"   # catalog schedule kept
    assert summary(dags["monitoring_work"]) == "4-59/20 * * * *"      # the good entry still applies
    assert summary(dags["billing_work"]) == "30 1 * * *"
    warned = caplog.text
    assert "override of sessions_mgt_work is ignored (thread SessionsMgtWork, field schedule.every: Input should be less than or equal to 60)" in warned
    assert "'no_such_thread' is not a live thread" in warned
    assert "override of domain_verification is ignored (must be an object, got str)" in warned
    assert "override of billing_work is ignored (override.colour: Extra inputs are not permitted)" in warned

    caplog.clear()
    set_overrides(monkeypatch, "{not json")
    with caplog.at_level(logging.WARNING, logger="panelflow.overrides"):
        dags = build_dags(catalog)
    assert summary(dags["monitoring_work"]) == "4-59/5 * * * *"  # no override at all
    assert "is not JSON" in caplog.text


def test_the_dag_file_parses_with_overrides_as_the_dag_processor_does(monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    set_overrides(monkeypatch, {"sessions_mgt_work": {"schedule": {"kind": "periodic", "every": 30, "align_to": 1},
                                                      "verbose_logging": True},
                                "monitoring_work": {"schedule": {"kind": "periodic", "every": 61}}})
    bag = DagBag("dags")
    assert bag.import_errors == {}
    assert summary(bag.dags["sessions_mgt_work"]) == "1-59/30 * * * *"
    assert "sessions_mgt_work" in bag.dags and len(bag.dags) == 61


def test_enable_logging_makes_every_step_task_of_that_thread_verbose(catalog, monkeypatch):
    set_overrides(monkeypatch, {"office365_sync_work": {"verbose_logging": True}})
    dags = build_dags(catalog)
    def is_verbose(task) -> bool:  # a mapped task keeps its arguments in partial_kwargs
        return task.partial_kwargs["verbose"] if hasattr(task, "partial_kwargs") else getattr(task, "verbose", False)

    verbose = {d for d, dag in dags.items() for t in dag.tasks if is_verbose(t)}
    assert verbose == {"office365_sync_work"}
    # the mapped step (one instance per tenant) carries it too
    mapped = [t for t in dags["office365_sync_work"].tasks if getattr(t, "partial_kwargs", None)]
    assert mapped and all(t.partial_kwargs["verbose"] for t in mapped)
    # the interval is untouched by a logging-only override
    assert summary(dags["office365_sync_work"]) == summary(build_dags(catalog, overrides={})["office365_sync_work"])


def test_parse_reports_why_a_stored_override_is_ignored(catalog):
    problems: dict[str, str] = {}
    good = parse({"sessions_mgt_work": {"verbose_logging": True, "updated_by": "admin",
                                        "updated_at": "2026-11-20T10:00:00+00:00"},
                  "group_action_work_sip": {"schedule": {"kind": "periodic", "every": 5}}}, catalog, problems)
    assert set(good) == {"sessions_mgt_work"} and isinstance(good["sessions_mgt_work"], ThreadOverride)
    assert good["sessions_mgt_work"].updated_by == "admin"
    assert "is a daemon" in problems["group_action_work_sip"]


def test_a_verbose_step_task_logs_inputs_result_and_the_steps_own_debug_lines(monkeypatch):
    """Enable Logging at the operator: DEBUG passes Airflow's level filter for this task only."""
    import pendulum
    import structlog

    import panelflow.operators as operators

    def step(interval, params, log):
        log.debug("step detail %s", params["x"])
        return {"written": 3}

    monkeypatch.setattr(operators, "resolve", lambda path: step)
    when = pendulum.datetime(2026, 11, 20, 12, 5, tz="UTC")
    context = {"data_interval_start": when, "data_interval_end": when, "params": {"x": 7}}

    def events(verbose: bool) -> list[dict]:
        op = StepOperator(task_id="probe", run="panelflow.steps.monitoring.process_monitors_and_metrics",
                          timezone="Europe/London", verbose=verbose)
        with structlog.testing.capture_logs() as captured:
            assert op.execute(context) == {"written": 3}
        return captured

    quiet = events(False)
    assert [e for e in quiet if e["log_level"] == "debug"] == []
    loud = [e["event"] for e in events(True) if e["log_level"] == "debug"]
    assert len(loud) == 3, loud
    assert loud[0].startswith("verbose logging (Threads Manager): panelflow.steps.monitoring."
                              "process_monitors_and_metrics(interval, params, log) with {")
    assert '"x": 7' in loud[0] and '"start": "2026-11-20 12:05:00+00:00"' in loud[0] and '"tz": "Europe/London"' in loud[0]
    assert loud[1] == "step detail 7"
    assert "returned after" in loud[2] and '"written": 3' in loud[2]


def test_overrides_pinned_by_the_environment_are_refused_by_the_page(catalog, monkeypatch):
    """An ``AIRFLOW_VAR_PANELFLOW_OVERRIDES`` (or a secrets backend) wins over the metadata DB, so
    the page says so instead of writing a value the factory would never read."""
    from panelflow.manager import store

    set_overrides(monkeypatch, {})
    with pytest.raises(store.ShadowedError, match="set by EnvironmentVariablesBackend"):
        store.update(None, catalog, "sessions_mgt_work", "admin", lambda entry: entry)
