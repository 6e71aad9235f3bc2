"""A broken catalog is refused with file, line, thread and field — never a silently missing DAG."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from panelflow.catalog import CatalogError, load_catalog

SETTINGS = """\
settings:
  timezone: Europe/London
nodes: {master: control server, remoting: windows backends}
run_groups:
  billing: {slots: 1}
  housekeeping: {slots: 1}
domains:
  housekeeping: {owners: [ops], alert_to: [ops@panelflow.example]}
"""

GOOD_THREAD = """\
threads:
  - name: SessionsMgtWork
    description: Expires sessions.
    domain: housekeeping
    schedule: {kind: periodic, every: 15, align_to: 7}
    run_groups: [housekeeping]
    nodes: [master]
    steps:
      - id: expire_sessions
        number: "1"
        seed: Update session data (expiry).
        run: panelflow.steps.sessions.expire_sessions
      - id: delete_old_session_history
        number: "2"
        seed: Delete session history after certain period.
        run: panelflow.steps.sessions.delete_old_session_history
"""


def write(tmp_path: Path, threads: str, settings: str = SETTINGS) -> Path:
    (tmp_path / "settings.yaml").write_text(settings)
    (tmp_path / "threads.yaml").write_text(textwrap.dedent(threads))
    return tmp_path


def problems(tmp_path, threads, settings=SETTINGS) -> list[str]:
    with pytest.raises(CatalogError) as exc:
        load_catalog(write(tmp_path, threads, settings))
    return exc.value.problems


def only(tmp_path, threads, settings=SETTINGS) -> str:
    found = problems(tmp_path, threads, settings)
    assert len(found) == 1, found
    return found[0]


def test_good_catalog_loads(tmp_path):
    cat = load_catalog(write(tmp_path, GOOD_THREAD))
    assert [t.name for t in cat.live_threads] == ["SessionsMgtWork"]


def test_unknown_key(tmp_path):
    msg = only(tmp_path, GOOD_THREAD.replace("    nodes: [master]\n", "    nodes: [master]\n    colour: red\n"))
    assert msg.startswith(f"{tmp_path}/threads.yaml:8: thread SessionsMgtWork, field colour:")
    assert "Extra inputs are not permitted" in msg


def test_unknown_key_in_a_step(tmp_path):
    msg = only(tmp_path, GOOD_THREAD.replace('        number: "2"\n', '        number: "2"\n        retry: 3\n'))
    assert msg.startswith(f"{tmp_path}/threads.yaml:15: thread SessionsMgtWork, field steps.delete_old_session_history.retry:")


def test_unknown_run_group(tmp_path):
    msg = only(tmp_path, GOOD_THREAD.replace("run_groups: [housekeeping]", "run_groups: [housekeeping, nightly]"))
    assert msg.startswith(f"{tmp_path}/threads.yaml:6: thread SessionsMgtWork, field run_groups:")
    assert "unknown run group 'nightly'" in msg


def test_unknown_node(tmp_path):
    msg = only(tmp_path, GOOD_THREAD.replace("nodes: [master]", "nodes: [mastr]"))
    assert msg.startswith(f"{tmp_path}/threads.yaml:7: thread SessionsMgtWork, field nodes:")
    assert "unknown node 'mastr'" in msg


def test_periodic_over_an_hour(tmp_path):
    msg = only(tmp_path, GOOD_THREAD.replace("every: 15, align_to: 7", "every: 90"))
    assert msg.startswith(f"{tmp_path}/threads.yaml:5: thread SessionsMgtWork, field schedule.every:")
    assert "less than or equal to 60" in msg


def test_align_not_below_period(tmp_path):
    msg = only(tmp_path, GOOD_THREAD.replace("align_to: 7", "align_to: 15"))
    assert msg.startswith(f"{tmp_path}/threads.yaml:5: thread SessionsMgtWork, field schedule")
    assert "align_to (15) must be smaller than every (15)" in msg


@pytest.mark.parametrize("times", ['["24:00"]', '["7:5"]', '["03:20", "03:20"]', "[]"])
def test_bad_fixed_times(tmp_path, times):
    msg = only(tmp_path, GOOD_THREAD.replace("{kind: periodic, every: 15, align_to: 7}", f"{{kind: fixed, at: {times}}}"))
    assert msg.startswith(f"{tmp_path}/threads.yaml:5: thread SessionsMgtWork, field schedule.at:")


def test_unquoted_fixed_time_is_read_as_a_time(tmp_path):
    cat = load_catalog(write(tmp_path, GOOD_THREAD.replace("{kind: periodic, every: 15, align_to: 7}", "{kind: fixed, at: [03:20]}")))
    assert cat.live_threads[0].schedule.at == ["03:20"]


def test_bad_time_zone(tmp_path):
    msg = only(tmp_path, GOOD_THREAD.replace("{kind: periodic, every: 15, align_to: 7}",
                                             "{kind: fixed, at: ['03:20'], timezone: Europe/Londn}"))
    assert msg.startswith(f"{tmp_path}/threads.yaml:5: thread SessionsMgtWork, field schedule.timezone:")
    assert "Europe/Londn" in msg


def test_bad_catalog_time_zone(tmp_path):
    msg = only(tmp_path, GOOD_THREAD, SETTINGS.replace("Europe/London", "Nowhere/City"))
    assert msg.startswith(f"{tmp_path}/settings.yaml:2: field settings.timezone:")


def test_duplicate_thread(tmp_path):
    body = GOOD_THREAD + textwrap.indent(GOOD_THREAD.split("threads:\n", 1)[1], "")
    msg = only(tmp_path, body)
    assert msg.startswith(f"{tmp_path}/threads.yaml:17: thread SessionsMgtWork, field name: duplicate thread name")
    assert "threads.yaml:2" in msg


def test_duplicate_step_id(tmp_path):
    msg = only(tmp_path, GOOD_THREAD.replace("id: delete_old_session_history", "id: expire_sessions"))
    assert msg.startswith(f"{tmp_path}/threads.yaml:13: thread SessionsMgtWork, field steps.expire_sessions.id: duplicate step id")


def test_duplicate_node_across_files(tmp_path):
    write(tmp_path, GOOD_THREAD)
    (tmp_path / "more.yaml").write_text("nodes:\n  master: again\n")
    with pytest.raises(CatalogError) as exc:
        load_catalog(tmp_path)
    # files load in name order: more.yaml first, so settings.yaml's master is the duplicate
    assert exc.value.problems == [
        f"{tmp_path}/settings.yaml:3: field nodes.master: duplicate id, first defined in {tmp_path}/more.yaml:2"
    ]


def test_duplicate_yaml_key(tmp_path):
    msg = only(tmp_path, GOOD_THREAD.replace("    nodes: [master]\n", "    nodes: [master]\n    nodes: [remoting]\n"))
    assert msg.startswith(f"{tmp_path}/threads.yaml:8: duplicate key 'nodes'")


def test_step_function_that_does_not_exist(tmp_path):
    msg = only(tmp_path, GOOD_THREAD.replace("sessions.expire_sessions", "sessions.expire_all_sessions"))
    assert msg.startswith(f"{tmp_path}/threads.yaml:12: thread SessionsMgtWork, field steps.expire_sessions.run:")
    assert "has no function 'expire_all_sessions'" in msg


def test_step_module_that_does_not_exist(tmp_path):
    msg = only(tmp_path, GOOD_THREAD.replace("panelflow.steps.sessions.expire_sessions", "panelflow.steps.session.expire_sessions"))
    assert "field steps.expire_sessions.run: no module 'panelflow.steps.session'" in msg


def test_step_function_with_an_input_no_task_supplies(tmp_path):
    """Caught when the catalog is checked, not when the task first runs."""
    msg = only(tmp_path, GOOD_THREAD.replace("panelflow.steps.sessions.expire_sessions", "panelflow.steps.billing.invoice_due_subscriptions"))
    assert "field steps.expire_sessions.run: panelflow.steps.billing.invoice_due_subscriptions takes ['conn', 'first'" in msg


def test_dependency_cycle(tmp_path):
    body = GOOD_THREAD.replace('        number: "1"\n', '        number: "1"\n        after: [delete_old_session_history]\n')
    body = body.replace('        number: "2"\n', '        number: "2"\n        after: [expire_sessions]\n')
    msg = only(tmp_path, body)
    assert msg.startswith(f"{tmp_path}/threads.yaml:8: thread SessionsMgtWork, field steps.after: dependency cycle")
    assert "expire_sessions → delete_old_session_history → expire_sessions" in msg


def test_after_an_unknown_step(tmp_path):
    msg = only(tmp_path, GOOD_THREAD.replace('        number: "2"\n', '        number: "2"\n        after: [expire_session]\n'))
    assert msg.startswith(f"{tmp_path}/threads.yaml:15: thread SessionsMgtWork, field steps.delete_old_session_history.after:")


def test_unknown_daemon_queue(tmp_path):
    msg = only(tmp_path, GOOD_THREAD.replace("{kind: periodic, every: 15, align_to: 7}", "{kind: daemon, queue: tickets}"))
    assert "field schedule.queue: unknown queue 'tickets'" in msg


def test_data_interval_needs_one_fixed_time(tmp_path):
    msg = only(tmp_path, GOOD_THREAD.replace("{kind: periodic, every: 15, align_to: 7}",
                                             "{kind: fixed, at: ['01:30', '13:30'], data_interval: true}"))
    assert "field schedule: data_interval: true needs exactly one run-at time" in msg


def test_live_thread_without_steps_or_schedule(tmp_path):
    found = problems(tmp_path, "threads:\n  - name: LicenseWork\n    description: x\n    domain: housekeeping\n")
    assert any("thread LicenseWork, field schedule: a live thread needs this field" in p for p in found)
    assert any("thread LicenseWork, field steps:" in p for p in found)


def test_legacy_thread_must_name_a_live_successor(tmp_path):
    body = GOOD_THREAD + "  - name: ADSyncWork\n    description: Legacy.\n    legacy: {superseded_by: SyncADUsersWork}\n"
    msg = only(tmp_path, body)
    assert msg.startswith(f"{tmp_path}/threads.yaml:19: thread ADSyncWork, field legacy.superseded_by:")


def test_every_problem_is_reported_at_once(tmp_path):
    body = GOOD_THREAD.replace("nodes: [master]", "nodes: [mastr]").replace(
        "sessions.expire_sessions", "sessions.expire_everything")
    assert len(problems(tmp_path, body)) == 2


def test_one_bad_thread_does_not_hide_another(tmp_path):
    second = GOOD_THREAD.split("threads:\n", 1)[1].replace("SessionsMgtWork", "OtherWork").replace("nodes: [master]", "nodes: [nope]")
    found = problems(tmp_path, GOOD_THREAD.replace("every: 15", "every: 61") + second)
    assert any("thread SessionsMgtWork, field schedule.every" in p for p in found)
    assert any("thread OtherWork, field nodes: unknown node 'nope'" in p for p in found)


def test_the_dag_file_fails_loudly_on_a_broken_catalog(tmp_path, monkeypatch):
    """The scheduler shows an import error instead of quietly building fewer DAGs."""
    from airflow.dag_processing.dagbag import DagBag

    write(tmp_path, GOOD_THREAD.replace("every: 15", "every: 61"))
    monkeypatch.setenv("PANELFLOW_CATALOG", str(tmp_path))
    bag = DagBag("dags")
    assert bag.dags == {}
    (err,) = bag.import_errors.values()
    assert "thread SessionsMgtWork, field schedule.every" in err


def test_a_step_may_run_on_nodes_of_its_own(tmp_path):
    """A PowerShell step of a thread on the master node goes to the remoting workers' queue."""
    body = GOOD_THREAD.replace('        seed: Update session data (expiry).\n',
                               '        seed: Update session data (expiry).\n        nodes: [remoting]\n')
    catalog = load_catalog(write(tmp_path, body))
    thread = catalog.threads[0]
    expire, history = thread.steps
    assert catalog.queue(thread, expire) == "remoting" and catalog.queue(thread, history) == "master"
    msg = only(tmp_path, body.replace("nodes: [remoting]", "nodes: [remotin]"))
    assert "thread SessionsMgtWork, field steps.expire_sessions.nodes: unknown node 'remotin'" in msg


# -- Automation status: count labels and deadlines ----------------------------------------------

def test_labels_and_a_deadline_load_in_step_order(tmp_path):
    body = GOOD_THREAD.replace("    nodes: [master]\n", "    nodes: [master]\n    deadline: {after_run_at_minutes: 240}\n")
    body = body.replace("        run: panelflow.steps.sessions.expire_sessions\n",
                        "        run: panelflow.steps.sessions.expire_sessions\n"
                        '        labels: {expired: "{n} sessions expired", kept: "{n} kept"}\n')
    body = body.replace("        run: panelflow.steps.sessions.delete_old_session_history\n",
                        "        run: panelflow.steps.sessions.delete_old_session_history\n"
                        '        labels: {deleted: "{n} history rows deleted"}\n')
    catalog = load_catalog(write(tmp_path, body))
    thread = catalog.threads[0]
    assert thread.deadline.after_run_at_minutes == 240
    assert catalog.labels(thread) == catalog.labels("SessionsMgtWork") == [
        ("expire_sessions", "expired", "{n} sessions expired"), ("expire_sessions", "kept", "{n} kept"),
        ("delete_old_session_history", "deleted", "{n} history rows deleted")]


@pytest.mark.parametrize("labels,why", [
    ('{expired: "sessions expired"}', "with {n} where the number goes"),
    ('{expired: "{n} of {count}"}', "may only use {n} in braces"),
    ('{expired: "{n} sessions {"}', "may only use {n} in braces"),
    ('{Expired: "{n} sessions"}', "is not a summary key"),
    ('{expired: 3}', "Input should be a valid string"),
])
def test_a_bad_label_names_its_file_line_thread_and_field(tmp_path, labels, why):
    body = GOOD_THREAD.replace("        run: panelflow.steps.sessions.expire_sessions\n",
                               f"        run: panelflow.steps.sessions.expire_sessions\n        labels: {labels}\n")
    msg = only(tmp_path, body)
    assert msg.startswith(f"{tmp_path}/threads.yaml:13: thread SessionsMgtWork, field steps.expire_sessions.labels"), msg
    assert why in msg


@pytest.mark.parametrize("deadline,why", [
    ("{after_run_at_minutes: 0}", "greater than or equal to 1"),
    ("{after_run_at_minutes: 1441}", "less than or equal to 1440"),
    ("{after_run_at_minutes: 30, hours: 4}", "Extra inputs are not permitted"),
])
def test_a_bad_deadline_names_its_file_line_thread_and_field(tmp_path, deadline, why):
    msg = only(tmp_path, GOOD_THREAD.replace("    nodes: [master]\n", f"    nodes: [master]\n    deadline: {deadline}\n"))
    assert msg.startswith(f"{tmp_path}/threads.yaml:8: thread SessionsMgtWork, field deadline"), msg
    assert why in msg


def test_a_daemon_thread_has_no_deadline(tmp_path):
    body = GOOD_THREAD.replace("schedule: {kind: periodic, every: 15, align_to: 7}",
                               "schedule: {kind: daemon, queue: group_actions.sip}")
    msg = only(tmp_path, body.replace("    nodes: [master]\n", "    nodes: [master]\n    deadline: {after_run_at_minutes: 30}\n"))
    assert msg.startswith(f"{tmp_path}/threads.yaml:8: thread SessionsMgtWork, field deadline: a daemon's run"), msg
