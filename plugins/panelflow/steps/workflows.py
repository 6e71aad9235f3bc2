"""WorkflowsThread 1: carry out the workflows created in the panel, one state at a time.

A workflow is an instance (``workflows``) of a panel-made definition: numbered steps, each an
``action`` (a group-action job queued and waited for), an ``approval`` (approvers e-mailed a link,
or deciding in the panel; a timeout), a ``wait`` (N minutes, or until a time) or a ``notify``
(e-mails). Migration 0029 describes the tables and who writes them.

Why it is built as transitions. Every change of a workflow — started, a step entered (its job
queued, its e-mails queued), a step completed, approved, refused, timed out, failed — is one
transaction that locks the workflow row, does the side effect, records the transition under the
unique key (workflow, position, transition) and moves the row. A worker killed mid-way rolls the
whole transition back; the rerun does it once. A transition found already recorded means the row
and its history disagree: the transaction is abandoned rather than repeat a side effect. E-mails
also carry outbox dedupe keys naming (workflow, position, recipient).

Events belong to one step (``workflow_events.position``), so one approval moves a workflow by one
state and never approves a later step. What needs no outside event (a notify, the next step's
start) follows at once, at most ``transitions_per_workflow`` per workflow and run; at most
``workflows_per_run`` workflows are looked at, least recently checked first.

The clock is the run's ``interval.end``: a step started at it, its deadline is measured from it,
and only decisions and job ends at or before it count — a decision after the deadline is ignored.
"""

from __future__ import annotations

import os
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlencode

from psycopg.types.json import Jsonb

from panelflow.services.group_actions import queue_job
from panelflow.services.outbox import enqueue
from panelflow.services.workflow_approvals import DECISIONS, token_digest
from panelflow.step import StepReport

WORKFLOWS_PER_RUN = 200
TRANSITIONS_PER_WORKFLOW = 10
APPROVAL_TIMEOUT_MINUTES = 3 * 24 * 60
APPROVAL_TEMPLATE = "workflow_approval"
NOTICE_TEMPLATE = "notification"
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
MAX_RECIPIENTS = 50   # per step: approvers or notify addresses


class BadStep(Exception):
    """A step's ``config`` cannot be carried out as written: the workflow fails with this reason."""


@dataclass
class Workflow:
    id: int
    definition_id: int
    definition: str
    params: dict
    requested_by: str | None
    state: str
    position: int
    step_deadline: datetime | None
    job_id: int | None


@dataclass
class Step:
    position: int
    kind: str
    name: str
    config: dict

    def label(self) -> str:
        return f"step {self.position} ({self.name})"


_ACTIVE = """
SELECT w.id FROM workflows w JOIN workflow_definitions d ON d.id = w.definition_id
WHERE w.state = 'running' OR (w.state = 'pending' AND d.enabled AND w.created_at <= %(at)s)
ORDER BY w.checked_at NULLS FIRST, w.id
LIMIT %(limit)s
"""

# A run racing this one on the same workflow skips it (SKIP LOCKED): it is moved once.
_LOCK = """
SELECT w.id, w.definition_id, d.name, w.params, w.requested_by, w.state, w.position, w.step_deadline, w.job_id
FROM workflows w JOIN workflow_definitions d ON d.id = w.definition_id
WHERE w.id = %s AND w.state IN ('pending', 'running')
FOR UPDATE OF w SKIP LOCKED
"""

_STEP = "SELECT position, kind, name, config FROM workflow_steps WHERE definition_id = %s AND position = %s"

_RECORD = """
INSERT INTO workflow_transitions (workflow_id, position, transition, at, detail) VALUES (%s, %s, %s, %s, %s)
ON CONFLICT DO NOTHING
"""

_ENTERED = """
UPDATE workflows SET state = 'running', position = %(position)s, step_started_at = %(at)s,
       step_deadline = %(deadline)s, job_id = %(job)s, started_at = coalesce(started_at, %(at)s)
WHERE id = %(id)s
"""

_FINISHED = """
UPDATE workflows SET state = %(state)s, position = %(position)s, finished_at = %(at)s,
       failure_reason = %(reason)s, step_deadline = NULL, started_at = coalesce(started_at, %(at)s)
WHERE id = %(id)s
"""

_JOB = "SELECT status, error, finished_at, backend, action FROM group_action_jobs WHERE id = %s"

# Decisions that count: at or before the run's clock and, for a deadline, not after it.
_DECISIONS = """
SELECT decision, actor, comment FROM workflow_events
WHERE workflow_id = %(id)s AND position = %(position)s AND occurred_at <= %(until)s
ORDER BY occurred_at, id
"""


def approval_page_url() -> str | None:
    """The deployment's own approval page (the Threads Manager's ``/workflow-approval``, which needs no
    Airflow sign-in) under ``PANELFLOW_BASE_URL``, the address Airflow is served at; None without it."""
    from panelflow.manager import URL_PREFIX

    base = os.environ.get("PANELFLOW_BASE_URL", "").rstrip("/")
    return f"{base}{URL_PREFIX}/workflow-approval" if base.startswith(("http://", "https://")) else None


def process_workflows(panel_db, interval, params=None, log=None) -> dict:
    """Process workflows created in system: start the pending ones and move each running one on
    by what happened since (a job ended, an approval given or refused, a deadline passed)."""
    params = params or {}
    at = interval.end
    limit = int(params.get("workflows_per_run", WORKFLOWS_PER_RUN))
    chain = int(params.get("transitions_per_workflow", TRANSITIONS_PER_WORKFLOW))
    link = params.get("workflow_approval_url") or approval_page_url()
    report = StepReport().zero("workflows_checked", "workflows_started", "steps_entered", "steps_completed",
                               "workflows_succeeded", "workflows_failed", "jobs_queued", "emails_queued")
    with panel_db.get_conn() as conn:
        conn.autocommit = True   # each transition below is its own transaction
        ids = [r[0] for r in conn.execute(_ACTIVE, {"at": at, "limit": limit}).fetchall()]
        for workflow_id in ids:
            report.add("workflows_checked")
            for _ in range(chain):
                with conn.transaction():
                    moved = _advance(conn, workflow_id, at, link, report, log)
                if not moved:
                    break
        if ids:
            conn.execute("UPDATE workflows SET checked_at = %s WHERE id = ANY(%s)", (at, ids))
    return report.as_dict()


def _advance(conn, workflow_id: int, at: datetime, link: str | None, report: StepReport, log) -> bool:
    """One transition of one workflow, inside the caller's transaction; True when another may follow."""
    row = conn.execute(_LOCK, (workflow_id,)).fetchone()
    if row is None:
        return False   # finished, cancelled, or being moved by another run
    wf = Workflow(*row)
    if wf.state == "pending":
        report.add("workflows_started")
        return _enter(conn, wf, 1, at, link, report, log)
    step = _step(conn, wf, wf.position)
    if step is None:
        _finish(conn, wf, wf.position, "failed", f"step {wf.position} is no longer in the definition", at, report,
                log)
        return False
    outcome = CHECKS[step.kind](conn, wf, step, at)
    if outcome is None:
        return False   # still waiting
    transition, detail = outcome
    if transition not in ("completed", "approved"):
        _finish(conn, wf, step.position, transition, f"{step.label()}: {detail['reason']}", at, report, log)
        return False
    _record(conn, wf, step.position, transition, at, detail)
    report.add("steps_completed")
    return _enter(conn, wf, step.position + 1, at, link, report, log)


def _step(conn, wf: Workflow, position: int) -> Step | None:
    row = conn.execute(_STEP, (wf.definition_id, position)).fetchone()
    return Step(*row) if row is not None else None


def _record(conn, wf: Workflow, position: int, transition: str, at: datetime, detail: dict | None = None) -> None:
    """The transition's row; already there means this transition was done: abandon, do nothing twice."""
    if conn.execute(_RECORD, (wf.id, position, transition, at, Jsonb(detail or {}))).rowcount != 1:
        raise RuntimeError(f"workflow {wf.id}: transition {transition!r} of step {position} is already recorded"
                           f" while the workflow still waits on it; nothing was repeated")


def _enter(conn, wf: Workflow, position: int, at: datetime, link: str | None, report: StepReport, log) -> bool:
    """Start step ``position`` (its side effect and the workflow's move), or finish after the last."""
    step = _step(conn, wf, position)
    if step is None:
        if position == 1:
            _finish(conn, wf, 0, "failed", "the definition has no steps", at, report, log)
        else:
            _finish(conn, wf, 0, "completed", None, at, report, log)
        return False
    _record(conn, wf, position, "entered", at, {"kind": step.kind})
    try:
        deadline, job_id = ENTER[step.kind](conn, wf, step, at, link, report)
    except BadStep as exc:
        _finish(conn, wf, position, "failed", f"{step.label()}: {exc}", at, report, log)
        return False
    conn.execute(_ENTERED, {"id": wf.id, "position": position, "at": at, "deadline": deadline, "job": job_id})
    report.add("steps_entered")
    return True


def _finish(conn, wf: Workflow, position: int, transition: str, reason: str | None, at: datetime,
            report: StepReport, log) -> None:
    """The workflow ends at ``position`` (0: the workflow as a whole): ``completed`` after its last
    step, else failed with ``reason`` (a failed job, a refusal, a timeout, a step that cannot be
    carried out), recorded as ``transition``."""
    _record(conn, wf, position, transition, at, {"reason": reason} if reason else None)
    conn.execute(_FINISHED, {"id": wf.id, "position": position or wf.position, "at": at, "reason": reason,
                             "state": "succeeded" if reason is None else "failed"})
    if reason is None:
        report.add("workflows_succeeded")
        return
    report.add("workflows_failed")
    report.skip(reason, f"workflow {wf.id} ({wf.definition})")
    if log is not None:
        log.info("workflow %s (%s) failed: %s", wf.id, wf.definition, reason)


# -- entering a step: its side effect, once -----------------------------------------------------

def _minutes(config: dict, key: str, default: int | None = None) -> int | None:
    value = config.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise BadStep(f"{key!r} must be a positive whole number of minutes")
    return value


def _addresses(config: dict, key: str) -> list[str]:
    values = config.get(key)
    if not isinstance(values, list) or not values or len(values) > MAX_RECIPIENTS:
        raise BadStep(f"{key!r} must be a list of 1 to {MAX_RECIPIENTS} e-mail addresses")
    bad = [v for v in values if not isinstance(v, str) or not EMAIL.match(v.strip())]
    if bad:
        raise BadStep(f"{key!r} holds what is not an e-mail address: {bad[0]!r}")
    return list(dict.fromkeys(v.strip().lower() for v in values))


def _enter_action(conn, wf: Workflow, step: Step, at: datetime, link, report) -> tuple:
    """Queue the step's group-action job (the workflow's ``params`` overlay its payload)."""
    config = step.config
    backend, action, payload = config.get("backend"), config.get("action"), config.get("payload", {})
    priority = config.get("priority", 5)
    if not (isinstance(backend, str) and backend and isinstance(action, str) and action):
        raise BadStep("an action needs a 'backend' and an 'action'")
    if not isinstance(payload, dict):
        raise BadStep("'payload' must be an object")
    if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 10:
        raise BadStep("'priority' must be a whole number from 0 to 10")
    timeout = _minutes(config, "timeout_minutes")
    job_id = queue_job(conn, backend, action, {**payload, **wf.params}, priority)
    report.add("jobs_queued")
    return (at + timedelta(minutes=timeout) if timeout else None), job_id


def _enter_approval(conn, wf: Workflow, step: Step, at: datetime, link, report) -> tuple:
    """E-mail each approver a link carrying a random token (only its hash is kept). The link's
    address is the step's ``approval_url``, the run's ``workflow_approval_url`` param or the
    deployment's own page (approval_page_url); without any, the e-mail asks for the decision in
    the panel."""
    approvers = _addresses(step.config, "approvers")
    quorum = step.config.get("quorum", 1)
    if isinstance(quorum, bool) or not isinstance(quorum, int) or not 1 <= quorum <= len(approvers):
        raise BadStep(f"'quorum' must be a whole number from 1 to the {len(approvers)} approvers")
    deadline = at + timedelta(minutes=_minutes(step.config, "timeout_minutes", APPROVAL_TIMEOUT_MINUTES))
    link = step.config.get("approval_url") or link   # the panel's own decision page, else the run's param
    if link is not None and not (isinstance(link, str) and re.match(r"^https?://[^\s?#]+(\?[^\s#]*)?$", link)):
        raise BadStep("'approval_url' must be an http(s) address")
    for approver in approvers:
        token = secrets.token_urlsafe(32)
        conn.execute("INSERT INTO workflow_approval_tokens (token_sha256, workflow_id, position, approver, expires_at)"
                     " VALUES (%s, %s, %s, %s, %s)", (token_digest(token), wf.id, step.position, approver, deadline))
        urls = {d: f"{link}{'&' if '?' in link else '?'}{urlencode({'token': token, 'decision': d})}"
                for d in DECISIONS} if link else {}
        report.add("emails_queued", enqueue(
            conn, dedupe_key=f"workflow:{wf.id}:{step.position}:approval:{approver}", to=approver,
            template=APPROVAL_TEMPLATE, not_before=at, context={
                "workflow": wf.definition, "workflow_id": wf.id, "step": step.name, "approver": approver,
                "requested_by": wf.requested_by, "message": step.config.get("message"), "deadline": deadline,
                "approve_url": urls.get("approved"), "refuse_url": urls.get("refused")}))
    return deadline, None


def _enter_wait(conn, wf: Workflow, step: Step, at: datetime, link, report) -> tuple:
    until = step.config.get("until")
    if until is not None:
        try:
            deadline = datetime.fromisoformat(str(until))
        except ValueError:
            raise BadStep(f"'until' is not an ISO date and time: {until!r}") from None
        if deadline.tzinfo is None:
            raise BadStep("'until' must name its time zone (an offset)")
        return deadline, None
    minutes = _minutes(step.config, "minutes")
    if minutes is None:
        raise BadStep("a wait needs 'minutes' or 'until'")
    return at + timedelta(minutes=minutes), None


def _enter_notify(conn, wf: Workflow, step: Step, at: datetime, link, report) -> tuple:
    recipients = _addresses(step.config, "to")
    subject, message = step.config.get("subject"), step.config.get("message")
    if not (isinstance(subject, str) and subject.strip() and isinstance(message, str) and message.strip()):
        raise BadStep("a notify step needs a 'subject' and a 'message'")
    for address in recipients:
        report.add("emails_queued", enqueue(
            conn, dedupe_key=f"workflow:{wf.id}:{step.position}:notify:{address}", to=address,
            template=NOTICE_TEMPLATE, not_before=at, context={"name": None, "subject": subject, "message": message}))
    return None, None


ENTER = {"action": _enter_action, "approval": _enter_approval, "wait": _enter_wait, "notify": _enter_notify}


# -- checking a step: has what it waits for happened? --------------------------------------------

def _passed(wf: Workflow, at: datetime) -> bool:
    return wf.step_deadline is not None and at >= wf.step_deadline


def _check_action(conn, wf: Workflow, step: Step, at: datetime) -> tuple | None:
    job = conn.execute(_JOB, (wf.job_id,)).fetchone() if wf.job_id is not None else None
    if job is None:
        return "failed", {"reason": "its group-action job is gone"}
    status, error, finished_at, backend, action = job
    if finished_at is not None and finished_at <= at:
        if status == "succeeded":
            return "completed", {"job": wf.job_id}
        if status == "failed":
            return "failed", {"reason": f"job {wf.job_id} ({backend} {action}) failed: {error or 'no error given'}",
                              "job": wf.job_id}
    if _passed(wf, at):
        return "timed_out", {"reason": f"job {wf.job_id} ({backend} {action}) did not finish by"
                                       f" {wf.step_deadline.isoformat()}", "job": wf.job_id}
    return None


def _check_approval(conn, wf: Workflow, step: Step, at: datetime) -> tuple | None:
    until = min(at, wf.step_deadline) if wf.step_deadline is not None else at
    approved: list[str] = []
    for decision, actor, comment in conn.execute(_DECISIONS, {"id": wf.id, "position": step.position,
                                                              "until": until}):
        if decision == "refused":
            return "refused", {"reason": f"refused by {actor}" + (f": {comment}" if comment else ""), "by": actor}
        approved.append(actor)
    if len(approved) >= step.config.get("quorum", 1):
        return "approved", {"by": approved}
    if _passed(wf, at):
        return "timed_out", {"reason": f"not approved by {wf.step_deadline.isoformat()}"
                                       f" ({len(approved)} of {step.config.get('quorum', 1)} approvals)"}
    return None


def _check_wait(conn, wf: Workflow, step: Step, at: datetime) -> tuple | None:
    return ("completed", {}) if _passed(wf, at) else None


def _check_notify(conn, wf: Workflow, step: Step, at: datetime) -> tuple:
    return "completed", {}


CHECKS = {"action": _check_action, "approval": _check_approval, "wait": _check_wait, "notify": _check_notify}
