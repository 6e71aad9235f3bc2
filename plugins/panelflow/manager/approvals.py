"""The page an approver's e-mailed link opens: a workflow's approval step decided by its one-time token.

WorkflowsThread e-mails each approver two links (approve, refuse) carrying a random token, of which
the panel DB keeps only the SHA-256 (panelflow.steps.workflows). The approver need not be an Airflow
user, so these routes ask no Airflow sign-in: the token is the credential — it names one approver of
one step, works once and expires with the step. Opening the link (GET) changes nothing, because
mail scanners and link previews open links; it shows what is asked and a button, and only the
POST the button sends records the decision (``record_approval``). A token that is unknown says
nothing about any workflow.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from typing import Annotated

from fastapi import FastAPI, Form, Query, status
from fastapi.responses import HTMLResponse
from jinja2 import Environment

PATH = "/workflow-approval"

_ASKED = """
SELECT d.name, s.name, t.approver, t.expires_at, t.used_at
FROM workflow_approval_tokens t
JOIN workflows w ON w.id = t.workflow_id
JOIN workflow_definitions d ON d.id = w.definition_id
JOIN workflow_steps s ON s.definition_id = w.definition_id AND s.position = t.position
WHERE t.token_sha256 = %s
"""

OUTCOMES = {
    "recorded": (status.HTTP_200_OK, "Thank you: your decision is recorded. The workflow moves on at its next run."),
    "already_decided": (status.HTTP_409_CONFLICT, "This link was used already: the decision stands."),
    "closed": (status.HTTP_409_CONFLICT, "The workflow is no longer waiting for this approval."),
    "expired": (status.HTTP_410_GONE, "The time to decide has passed: the approval step timed out."),
    "unknown": (status.HTTP_404_NOT_FOUND, "This link is not valid."),
}


def add_routes(app: FastAPI, templates: Environment, connect: Callable,
               clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)) -> None:
    """``connect()``: a context manager giving an autocommit panel-DB connection. ``clock``: when the
    approver clicked — the event's own time, as the panel's decisions are recorded."""
    from panelflow.services.workflow_approvals import DECISIONS, record_approval, token_digest

    def page(code: int, **context) -> HTMLResponse:
        return HTMLResponse(templates.get_template("workflow_approval.html").render(**context), status_code=code)

    @app.get(PATH, response_class=HTMLResponse)
    def ask(token: Annotated[str, Query(max_length=200)], decision: Annotated[str, Query(max_length=20)]):
        if decision not in DECISIONS:
            return page(status.HTTP_400_BAD_REQUEST, message=f"The link asks for no decision ({decision!r}).")
        with connect() as conn:
            row = conn.execute(_ASKED, (token_digest(token),)).fetchone()
        if row is None:
            return page(OUTCOMES["unknown"][0], message=OUTCOMES["unknown"][1])
        workflow, step, approver, expires_at, used_at = row
        if used_at is not None:
            return page(OUTCOMES["already_decided"][0], message=OUTCOMES["already_decided"][1])
        return page(status.HTTP_200_OK, ask=True, token=token, decision=decision, workflow=workflow, step=step,
                    approver=approver, expires_at=expires_at)

    @app.post(PATH, response_class=HTMLResponse)
    def decide(token: Annotated[str, Form(max_length=200)], decision: Annotated[str, Form(max_length=20)],
               comment: Annotated[str | None, Form(max_length=2000)] = None):
        if decision not in DECISIONS:
            return page(status.HTTP_400_BAD_REQUEST, message=f"No such decision: {decision!r}.")
        with connect() as conn:
            outcome = record_approval(conn, token, decision, clock(), comment or None)["outcome"]
        code, message = OUTCOMES[outcome]
        return page(code, message=message, outcome=outcome)
