"""The approval page an e-mailed workflow link opens (panelflow.manager.approvals), on the real panel DB:
opening the link changes nothing, the confirmation records the decision once, the workflow then moves
on; a used, unknown or expired link says so. The routes run in a FastAPI app of their own here; that
the Threads Manager mounts them with no Airflow sign-in is checked against make run in
tests/manager/test_automation_status.py."""

from __future__ import annotations

from contextlib import contextmanager
from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from panelflow.manager import approvals
from panelflow.manager.app import _templates
from panelflow.steps.workflows import approval_page_url

from steps.test_workflows import APPROVAL, T0, TABLES, define, run, start, state


@pytest.fixture
def site(panel_db, sql):
    sql("TRUNCATE " + ", ".join(TABLES) + " RESTART IDENTITY CASCADE")
    now = {"at": T0 + timedelta(minutes=5)}

    @contextmanager
    def connect():
        with panel_db.get_conn() as conn:
            conn.autocommit = True
            yield conn

    app = FastAPI()
    approvals.add_routes(app, _templates, connect, clock=lambda: now["at"])
    client = TestClient(app)
    client.now = now
    return client


def links(sql, approver):
    """The approve and refuse links of the approver's e-mail, as paths of the page."""
    (body,) = sql("SELECT body_text FROM email_outbox WHERE to_address = %s AND template = 'workflow_approval'",
                  (approver,))[0]
    found = {}
    for word in body.split():
        if "/threads-manager/workflow-approval?" in word:
            query = parse_qs(urlsplit(word).query)
            found[query["decision"][0]] = (query["token"][0], query["decision"][0])
    return found


def test_the_deployments_page_is_the_default_link(monkeypatch):
    monkeypatch.setenv("PANELFLOW_BASE_URL", "https://automation.provider.example/")
    assert approval_page_url() == "https://automation.provider.example/threads-manager/workflow-approval"
    monkeypatch.delenv("PANELFLOW_BASE_URL")
    assert approval_page_url() is None


def test_open_then_confirm_records_once_and_the_workflow_moves_on(site, panel_db, sql, monkeypatch):
    monkeypatch.setenv("PANELFLOW_BASE_URL", "http://testserver")
    workflow = start(sql, define(sql, APPROVAL))
    run(panel_db, 0, workflow_approval_url=None)            # no run param: the deployment's own page
    token, decision = links(sql, "boss@provider.example")["approved"]

    opened = site.get(approvals.PATH, params={"token": token, "decision": decision})
    assert opened.status_code == 200 and 'id="confirm"' in opened.text and "Manager approves" in opened.text
    assert sql("SELECT count(*) FROM workflow_events")[0][0] == 0             # a scanner's GET decides nothing

    done = site.post(approvals.PATH, data={"token": token, "decision": decision, "comment": "fine by me"})
    assert done.status_code == 200 and 'data-outcome="recorded"' in done.text
    assert sql("SELECT decision, source, actor, comment FROM workflow_events") == [
        ("approved", "email", "boss@provider.example", "fine by me")]
    again = site.post(approvals.PATH, data={"token": token, "decision": "refused"})
    assert again.status_code == 409 and 'data-outcome="already_decided"' in again.text
    assert site.get(approvals.PATH, params={"token": token, "decision": decision}).status_code == 409
    assert sql("SELECT count(*) FROM workflow_events")[0][0] == 1

    run(panel_db, 6)                                          # quorum 1: the workflow ends its only step
    assert state(sql, workflow)[0] == "succeeded"


def test_unknown_expired_and_malformed_links_say_so(site, panel_db, sql, monkeypatch):
    monkeypatch.setenv("PANELFLOW_BASE_URL", "http://testserver")
    start(sql, define(sql, APPROVAL))
    run(panel_db, 0, workflow_approval_url=None)
    token, _ = links(sql, "cto@provider.example")["refused"]

    assert site.get(approvals.PATH, params={"token": "nope", "decision": "approved"}).status_code == 404
    unknown = site.post(approvals.PATH, data={"token": "nope", "decision": "approved"})
    assert unknown.status_code == 404 and "Manager approves" not in unknown.text
    assert site.get(approvals.PATH, params={"token": token, "decision": "maybe"}).status_code == 400
    site.now["at"] = T0 + timedelta(minutes=61)               # the step's 60 minutes are over
    late = site.post(approvals.PATH, data={"token": token, "decision": "refused"})
    assert late.status_code == 410 and 'data-outcome="expired"' in late.text
    assert sql("SELECT count(*) FROM workflow_events")[0][0] == 0
