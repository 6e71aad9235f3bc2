"""A workflow approver's decision, recorded from the one-time token of their e-mailed link.

Shared by WorkflowsThread (panelflow.steps.workflows), which e-mails the links and acts on the
decisions, and by the page the links open (panelflow.manager.approvals) or a panel page of its own:
only the SHA-256 of a token is stored, a token names one approver of one step, works once and
expires with the step.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

DECISIONS = ("approved", "refused")


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


_TOKEN = """
SELECT t.workflow_id, t.position, t.approver, t.expires_at, t.used_at, w.state, w.position
FROM workflow_approval_tokens t JOIN workflows w ON w.id = t.workflow_id
WHERE t.token_sha256 = %s
FOR UPDATE OF t
"""


def record_approval(conn, token: str, decision: str, at: datetime, comment: str | None = None) -> dict[str, Any]:
    """Record the decision an approver made by following their e-mailed link.

    For the endpoint the link points at (the panel, or a route of the Threads Manager): ``token``
    as it came in the link, ``decision`` ``approved`` or ``refused``, ``at`` when the approver
    clicked. Returns ``{"outcome": …, "workflow_id": …, "position": …}``, the outcome one of
    ``recorded``, ``unknown`` (no such token: nothing is said about any workflow), ``expired``
    (after the step's deadline), ``closed`` (the workflow is no longer at that step) or
    ``already_decided`` (this link, or this approver in the panel, decided before). The next
    WorkflowsThread run acts on it. A link works once.
    """
    if decision not in DECISIONS:
        raise ValueError(f"decision must be one of {DECISIONS}, not {decision!r}")
    with conn.transaction():
        row = conn.execute(_TOKEN, (token_digest(token),)).fetchone()
        if row is None:
            return {"outcome": "unknown", "workflow_id": None, "position": None}
        workflow_id, position, approver, expires_at, used_at, state, at_position = row
        answer = {"workflow_id": workflow_id, "position": position}
        if used_at is not None:
            return {"outcome": "already_decided", **answer}
        if state != "running" or at_position != position:
            return {"outcome": "closed", **answer}
        if at > expires_at:
            return {"outcome": "expired", **answer}
        inserted = conn.execute(
            "INSERT INTO workflow_events (workflow_id, position, decision, source, actor, comment, occurred_at)"
            " VALUES (%s, %s, %s, 'email', %s, %s, %s) ON CONFLICT (workflow_id, position, actor) DO NOTHING",
            (workflow_id, position, decision, approver, comment, at)).rowcount
        conn.execute("UPDATE workflow_approval_tokens SET used_at = %s WHERE token_sha256 = %s",
                     (at, token_digest(token)))
    return {"outcome": "recorded" if inserted else "already_decided", **answer}
