"""WorkflowsThread 1 on the real panel DB: approvals that wait, resume and time out, jobs queued and
waited for through the real group-action queue, and a run killed mid-transition (SIGKILL) that the
next run finishes without repeating a job or an e-mail."""

from __future__ import annotations

import multiprocessing
import os
import re
import signal
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from urllib.parse import parse_qs, urlsplit

import pytest
from psycopg.types.json import Jsonb

from panelflow.step import Interval
from panelflow.steps import workflows
from panelflow.services.workflow_approvals import record_approval, token_digest
from panelflow.steps.workflows import process_workflows

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=timezone.utc)
LINK = "https://panel.example/workflows/decide"
PARAMS = {"workflow_approval_url": LINK}
TABLES = ("workflow_approval_tokens", "workflow_events", "workflow_transitions", "workflows", "workflow_steps",
          "workflow_definitions", "group_action_jobs", "email_outbox")


@pytest.fixture(autouse=True)
def _clean(panel_db, sql):
    sql("TRUNCATE " + ", ".join(TABLES) + " RESTART IDENTITY CASCADE")


def run(panel_db, minutes: int, **params):
    end = T0 + timedelta(minutes=minutes)
    return process_workflows(panel_db, Interval(end - timedelta(minutes=2), end), {**PARAMS, **params})


def define(sql, *steps, name="New VPS for a customer") -> int:
    (definition,) = sql("INSERT INTO workflow_definitions (name) VALUES (%s) RETURNING id", (name,))[0]
    for position, (kind, step_name, config) in enumerate(steps, 1):
        sql("INSERT INTO workflow_steps (definition_id, position, kind, name, config) VALUES (%s, %s, %s, %s, %s)",
            (definition, position, kind, step_name, Jsonb(config)))
    return definition


def start(sql, definition, params=None) -> int:
    return sql("INSERT INTO workflows (definition_id, params, requested_by, created_at) VALUES (%s, %s, %s, %s)"
               " RETURNING id", (definition, Jsonb(params or {}), "operator@provider.example", T0))[0][0]


def state(sql, workflow):
    return sql("SELECT state, position, failure_reason FROM workflows WHERE id = %s", (workflow,))[0]


def transitions(sql, workflow):
    """(minutes after T0, position, transition), in order."""
    return sql("SELECT (extract(epoch FROM at - %s) / 60)::int, position, transition FROM workflow_transitions"
               " WHERE workflow_id = %s ORDER BY at, position, transition", (T0, workflow))


@contextmanager
def decide(panel_db):
    """A connection as the approval link's endpoint would hold one."""
    with panel_db.get_conn() as conn:
        conn.autocommit = True
        yield conn


def approval_token(sql, approver, decision="approved"):
    (body,) = sql("SELECT body_text FROM email_outbox WHERE to_address = %s AND template = 'workflow_approval'",
                  (approver,))[0]
    urls = [u for u in re.findall(r"https://\S+", body) if parse_qs(urlsplit(u).query)["decision"] == [decision]]
    assert len(urls) == 1
    return parse_qs(urlsplit(urls[0]).query)["token"][0]


APPROVAL = ("approval", "Manager approves", {"approvers": ["boss@provider.example", "cto@provider.example"],
                                             "timeout_minutes": 60, "message": "4 vCPU, 8 GB for ACME"})
ACTION = ("action", "Create the VM", {"backend": "vps", "action": "create_vm",
                                      "payload": {"memory_mb": 8192, "cpus": 4}, "priority": 2})
NOTIFY = ("notify", "Tell the customer", {"to": ["it@acme.example"], "subject": "Your server is ready",
                                          "message": "Your new virtual server is ready."})


def test_approval_waits_resumes_on_approval_then_the_job_and_the_notice(panel_db, sql):
    from panelflow.services.group_actions import process_group_actions

    wf = start(sql, define(sql, APPROVAL, ACTION, NOTIFY), {"name": "acme-web01"})
    summary = run(panel_db, 0)
    assert summary["workflows_started"] == 1 and summary["emails_queued"] == 2
    assert state(sql, wf) == ("running", 1, None)
    token = approval_token(sql, "boss@provider.example")
    assert sql("SELECT count(*) FROM workflow_approval_tokens WHERE token_sha256 = %s",
               (token.encode(),))[0][0] == 0                         # only the token's hash is stored
    assert sql("SELECT count(*) FROM workflow_approval_tokens WHERE token_sha256 = %s",
               (token_digest(token),))[0][0] == 1

    run(panel_db, 2)                                                 # no decision yet: it waits
    assert state(sql, wf) == ("running", 1, None)
    assert sql("SELECT count(*) FROM group_action_jobs")[0][0] == 0

    with decide(panel_db) as conn:
        decided = record_approval(conn, token, "approved", T0 + timedelta(minutes=3))
        assert decided == {"outcome": "recorded", "workflow_id": wf, "position": 1}
        assert record_approval(conn, token, "refused", T0 + timedelta(minutes=3))["outcome"] == "already_decided"
        assert record_approval(conn, "not-a-token", "approved", T0)["outcome"] == "unknown"

    run(panel_db, 4)                                                 # approved → the job is queued
    assert state(sql, wf) == ("running", 2, None)
    assert sql("SELECT backend, action, payload, priority, status FROM group_action_jobs") == [
        ("vps", "create_vm", {"memory_mb": 8192, "cpus": 4, "name": "acme-web01"}, 2, "pending")]
    run(panel_db, 6)                                                 # the job has not run: it waits
    assert state(sql, wf) == ("running", 2, None)

    end = T0 + timedelta(minutes=7)
    process_group_actions(panel_db, "vps", lambda action, payload: {"vm": payload["name"]},
                          Interval(end - timedelta(minutes=1), end))
    summary = run(panel_db, 8)
    assert state(sql, wf) == ("succeeded", 3, None)
    assert summary["workflows_succeeded"] == 1
    assert transitions(sql, wf) == [(0, 1, "entered"), (4, 1, "approved"), (4, 2, "entered"), (8, 0, "completed"),
                                    (8, 2, "completed"), (8, 3, "completed"), (8, 3, "entered")]
    assert sorted(sql("SELECT to_address, template FROM email_outbox")) == [
        ("boss@provider.example", "workflow_approval"), ("cto@provider.example", "workflow_approval"),
        ("it@acme.example", "notification")]
    run(panel_db, 10)                                                # finished: a later run does nothing
    assert sql("SELECT count(*) FROM email_outbox")[0][0] == 3
    assert sql("SELECT count(*) FROM group_action_jobs")[0][0] == 1


def test_not_approved_times_out_on_the_runs_clock(panel_db, sql):
    kind, name, config = APPROVAL
    wf = start(sql, define(sql, (kind, name, {**config, "approval_url": LINK + "?lang=en"}), ACTION))
    run(panel_db, 0, workflow_approval_url=None)                      # the link's address from the step
    token = approval_token(sql, "cto@provider.example")
    run(panel_db, 59)
    assert state(sql, wf) == ("running", 1, None)
    with decide(panel_db) as conn:   # a click after the deadline
        assert record_approval(conn, token, "approved", T0 + timedelta(minutes=61))["outcome"] == "expired"
    summary = run(panel_db, 60)
    reason = state(sql, wf)[2]
    assert state(sql, wf)[:2] == ("failed", 1)
    assert reason.startswith("step 1 (Manager approves): not approved by 2026-03-02T11:00:00+00:00 (0 of 1")
    assert summary["workflows_failed"] == 1 and summary["skipped"] == {reason: 1}
    assert sql("SELECT count(*) FROM group_action_jobs")[0][0] == 0
    with decide(panel_db) as conn:
        assert record_approval(conn, token, "approved", T0 + timedelta(minutes=30))["outcome"] == "closed"


def test_refusal_in_the_panel_and_a_failed_job_stop_the_workflow_with_the_reason(panel_db, sql):
    from panelflow.services.group_actions import JobRejected, process_group_actions

    refused = start(sql, define(sql, APPROVAL, ACTION))
    failing = start(sql, define(sql, ACTION, NOTIFY, name="Direct"))
    run(panel_db, 0)
    sql("INSERT INTO workflow_events (workflow_id, position, decision, source, actor, comment, occurred_at)"
        " VALUES (%s, 1, 'refused', 'panel', 'admin', 'over budget', %s)", (refused, T0 + timedelta(minutes=1)))

    def handler(action, payload):
        raise JobRejected("The VM name is already in use")

    process_group_actions(panel_db, "vps", handler, Interval(T0, T0 + timedelta(minutes=1)))
    run(panel_db, 2)
    assert state(sql, refused) == ("failed", 1, "step 1 (Manager approves): refused by admin: over budget")
    assert state(sql, failing) == ("failed", 1, "step 1 (Create the VM): job 1 (vps create_vm) failed:"
                                                " The VM name is already in use")
    assert sql("SELECT count(*) FROM email_outbox WHERE template = 'notification'")[0][0] == 0


def test_waits_and_a_step_that_cannot_be_carried_out(panel_db, sql):
    waiting = start(sql, define(sql, ("wait", "Cool down", {"minutes": 30}), NOTIFY))
    broken = start(sql, define(sql, ("approval", "Nobody", {"approvers": []}), name="Broken"))
    empty = start(sql, define(sql, name="Empty"))
    run(panel_db, 0)
    assert state(sql, broken) == ("failed", 1, "step 1 (Nobody): 'approvers' must be a list of 1 to 50 e-mail"
                                               " addresses")
    assert state(sql, empty) == ("failed", 0, "the definition has no steps")
    run(panel_db, 29)
    assert state(sql, waiting) == ("running", 1, None)
    run(panel_db, 30)
    assert state(sql, waiting) == ("succeeded", 2, None)


def _run_and_die(minutes):
    """The step in a child process that SIGKILLs itself right after its first e-mail is queued,
    inside the transition's transaction (as a worker killed mid-step)."""
    real = workflows.enqueue

    def enqueue_then_die(conn, **kwargs):
        real(conn, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)

    workflows.enqueue = enqueue_then_die
    from panelflow.hooks.panel_db import PanelDatabaseHook

    end = T0 + timedelta(minutes=minutes)
    process_workflows(PanelDatabaseHook(), Interval(end - timedelta(minutes=2), end), PARAMS)


def test_a_run_killed_mid_transition_resumes_without_repeating_a_step(panel_db, sql):
    wf = start(sql, define(sql, ACTION, APPROVAL))
    run(panel_db, 0)                                                  # the action's job is queued
    sql("UPDATE group_action_jobs SET status = 'succeeded', finished_at = %s", (T0,))   # and done
    child = multiprocessing.get_context("fork").Process(target=_run_and_die, args=(2,))
    child.start()
    child.join(60)
    assert child.exitcode == -signal.SIGKILL
    # the killed transition (step 1 completed, step 2 entered, first e-mail) left nothing behind
    assert state(sql, wf) == ("running", 1, None)
    assert sql("SELECT count(*) FROM email_outbox")[0][0] == 0
    assert transitions(sql, wf) == [(0, 1, "entered")]

    run(panel_db, 2)                                                  # the retry
    run(panel_db, 2)                                                  # and a rerun of the same interval
    assert state(sql, wf) == ("running", 2, None)
    assert transitions(sql, wf) == [(0, 1, "entered"), (2, 1, "completed"), (2, 2, "entered")]
    assert sql("SELECT count(*) FROM group_action_jobs WHERE backend = 'vps'")[0][0] == 1
    assert sorted(sql("SELECT to_address FROM email_outbox")) == [("boss@provider.example",),
                                                                  ("cto@provider.example",)]
    assert sql("SELECT count(*) FROM workflow_approval_tokens")[0][0] == 2


def test_a_transition_already_recorded_is_never_done_again(panel_db, sql):
    """The unique key is the backstop: history that says step 1 began while the row says it did not
    abandons the transition instead of queueing the job a second time."""
    wf = start(sql, define(sql, ACTION))
    sql("INSERT INTO workflow_transitions (workflow_id, position, transition, at) VALUES (%s, 1, 'entered', %s)",
        (wf, T0))
    with pytest.raises(RuntimeError, match="already recorded"):
        run(panel_db, 0)
    assert sql("SELECT count(*) FROM group_action_jobs")[0][0] == 0
    assert state(sql, wf) == ("pending", 0, None)


def test_workflows_thread_no_longer_starts_paused():
    from panelflow.catalog.cache import load_catalog_cached
    from panelflow.factory import build_dag

    catalog = load_catalog_cached()
    (thread,) = [t for t in catalog.live_threads if t.name == "WorkflowsThread"]
    dag = build_dag(catalog, thread)
    assert [t.task_id for t in dag.tasks if "process_workflows" in t.task_id]
    assert dag.is_paused_upon_creation is False


def test_two_runs_racing_start_each_workflow_once(panel_db, sql):
    import threading

    definition = define(sql, ACTION, APPROVAL)
    started = [start(sql, definition) for _ in range(20)]
    errors = []

    def racer():
        try:
            run(panel_db, 0)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=racer) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert sql("SELECT count(*) FROM group_action_jobs") == [(len(started),)]
    assert sql("SELECT count(*) FROM workflows WHERE state = 'running' AND position = 1") == [(len(started),)]
    assert sql("SELECT count(*) FROM workflow_transitions") == [(len(started),)]
