"""The failed-actions queue: what the automation gave up on, and an operator's retry, resend or dismiss.

WHMCS's Module Queue and MachPanel's Group Actions Logs, on the panel DB, for three kinds of rows:

- ``job``: a group-action job (``group_action_jobs``, any backend) that ended ``failed`` — rejected
  by its backend, a bug in its handler, or deferred until it ran out of attempts;
- ``charge``: an invoice whose latest payment attempt was ``declined`` or refused (``error``) and
  which is not paid;
- ``message``: an outbox message ``failed`` or ``uncertain`` (a worker stopped during SMTP DATA:
  the customer may have it already, so a resend needs the operator's explicit confirmation).

Every change writes ``automation_actions`` (who, when, the row as it was) in the same transaction
as the change itself, so the audit can never disagree with the rows. Nothing is deleted: a retried
job keeps its ``attempts`` and last ``error`` until the processor's next outcome overwrites them,
and the audit keeps every earlier one. A retry goes through the same queue as a first attempt:
the job is put back to ``pending`` and its backend's processor claims it like any other.

Callers pass an open psycopg connection outside a transaction (each operation is one
transaction); the page (panelflow.manager) and any script can use these alike.
"""

from __future__ import annotations

from typing import Any

from psycopg.types.json import Jsonb

KINDS = ("job", "charge", "message")


class NotRetryable(Exception):
    """The row cannot be put back (not failed any more, secrets gone, needs a confirmation): the reason."""


_JOBS = """
SELECT j.id, j.backend, j.action, j.payload, j.attempts, j.error, j.created_at, j.started_at, j.finished_at,
       j.secrets_removed
FROM group_action_jobs j
WHERE j.status = 'failed'
  AND NOT EXISTS (SELECT 1 FROM failed_action_dismissals d WHERE d.kind = 'job' AND d.target_id = j.id)
ORDER BY j.finished_at DESC NULLS LAST, j.id DESC
LIMIT %(limit)s
"""

_CHARGES = """
SELECT i.id, i.invoice_number, c.name, a.attempt, a.status, a.gateway_code, a.gateway_message,
       a.finished_at, a.amount, a.currency, i.status
FROM invoices i
JOIN customers c ON c.id = i.customer_id
JOIN LATERAL (SELECT * FROM payment_attempts a WHERE a.invoice_id = i.id ORDER BY a.attempt DESC LIMIT 1) a ON true
WHERE i.status IN ('open', 'payment_declined') AND a.status IN ('declined', 'error')
  AND NOT EXISTS (SELECT 1 FROM failed_action_dismissals d WHERE d.kind = 'charge' AND d.target_id = i.id)
ORDER BY a.finished_at DESC NULLS LAST, i.id DESC
LIMIT %(limit)s
"""

_MESSAGES = """
SELECT m.id, m.template, m.to_address, m.subject, m.status, m.attempts, m.last_error,
       coalesce(m.claimed_at, m.created_at)
FROM email_outbox m
WHERE m.status IN ('failed', 'uncertain')
  AND NOT EXISTS (SELECT 1 FROM failed_action_dismissals d WHERE d.kind = 'message' AND d.target_id = m.id)
ORDER BY coalesce(m.claimed_at, m.created_at) DESC, m.id DESC
LIMIT %(limit)s
"""


def _iso(value) -> str | None:
    return value.isoformat() if value is not None else None


def list_failed(conn, limit: int = 200) -> dict[str, list[dict[str, Any]]]:
    """The three queues, newest first, without the dismissed rows (secrets never leave the DB)."""
    jobs = [{"kind": "job", "id": r[0], "backend": r[1], "target": _target(r[3]), "action": r[2],
             "message": r[5], "attempts": r[4], "when": _iso(r[8] or r[7] or r[6]),
             "retryable": not r[9], "why_not": _secrets_reason(r[9])}
            for r in conn.execute(_JOBS, {"limit": limit})]
    charges = [{"kind": "charge", "id": r[0], "backend": "payment gateway", "target": f"invoice {r[1]} ({r[2]})",
                "action": f"charge {r[8]} {r[9]}", "message": r[6] or r[5] or r[4], "attempts": r[3],
                "status": r[4], "when": _iso(r[7]), "retryable": True, "why_not": None}
               for r in conn.execute(_CHARGES, {"limit": limit})]
    messages = [{"kind": "message", "id": r[0], "backend": "e-mail", "target": r[2], "action": f"{r[1]}: {r[3]}",
                 "message": r[6], "attempts": r[5], "status": r[4], "when": _iso(r[7]), "retryable": True,
                 "needs_confirmation": r[4] == "uncertain", "why_not": None}
                for r in conn.execute(_MESSAGES, {"limit": limit})]
    return {"jobs": jobs, "charges": charges, "messages": messages}


def _target(payload: Any) -> str:
    """What the job acts on, for the operator: the payload's naming fields (never a secret)."""
    if not isinstance(payload, dict):
        return ""
    for key in ("upn", "email", "mailbox", "user", "username", "name", "identity", "vm", "domain", "group"):
        if isinstance(payload.get(key), str | int) and not isinstance(payload.get(key), bool):
            return f"{key} {payload[key]}"
    return ", ".join(f"{k}={v}" for k, v in list(payload.items())[:2] if isinstance(v, str | int))


def _secrets_reason(removed) -> str | None:
    if not removed:
        return None
    return (f"its payload's secrets ({', '.join(sorted(removed))}) were removed when it finished;"
            " queue it again from the panel with them")


def record(conn, user: str, action: str, kind: str, target_id: Any, detail: dict[str, Any]) -> None:
    """One audit row (call inside the transaction of the change it records)."""
    conn.execute("INSERT INTO automation_actions (username, action, target_kind, target_id, detail)"
                 " VALUES (%s, %s, %s, %s, %s)",
                 (user, action, kind, None if target_id is None else str(target_id), Jsonb(detail)))


def retry_job(conn, job_id: int, user: str) -> dict[str, Any]:
    """Put one failed job back to ``pending``: its processor's next run makes exactly one new attempt."""
    with conn.transaction():
        row = conn.execute("SELECT status, attempts, error, backend, action, secrets_removed, finished_at"
                           " FROM group_action_jobs WHERE id = %s FOR UPDATE", (job_id,)).fetchone()
        if row is None:
            raise LookupError(f"no group-action job {job_id}")
        status, attempts, error, backend, action, removed, finished_at = row
        if status != "failed":
            raise NotRetryable(f"job {job_id} is {status}, not failed")
        if removed:
            raise NotRetryable(f"job {job_id} cannot be retried: {_secrets_reason(removed)}")
        conn.execute("UPDATE group_action_jobs SET status = 'pending', finished_at = NULL, started_at = NULL"
                     " WHERE id = %s", (job_id,))
        conn.execute("DELETE FROM failed_action_dismissals WHERE kind = 'job' AND target_id = %s", (job_id,))
        record(conn, user, "retry", "job", job_id, {"backend": backend, "action": action, "attempts": attempts,
                                                    "error": error, "finished_at": _iso(finished_at)})
    return {"id": job_id, "status": "pending", "attempts": attempts}


def retry_jobs(conn, job_ids: list[int], user: str) -> dict[str, Any]:
    """Retry all shown: each job on its own, so one that cannot be retried does not hold back the others."""
    retried, refused = [], {}
    for job_id in job_ids:
        try:
            retry_job(conn, job_id, user)
            retried.append(job_id)
        except (NotRetryable, LookupError) as exc:
            refused[job_id] = str(exc)
    return {"retried": retried, "refused": refused}


def dismiss(conn, kind: str, target_id: int, user: str) -> dict[str, Any]:
    """Mark a failed row handled: it leaves the queue, the row itself is untouched."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; one of {', '.join(KINDS)}")
    with conn.transaction():
        added = conn.execute("INSERT INTO failed_action_dismissals (kind, target_id, dismissed_by) VALUES (%s, %s, %s)"
                             " ON CONFLICT DO NOTHING", (kind, target_id, user)).rowcount
        if added:
            record(conn, user, "dismiss", kind, target_id, {})
    return {"kind": kind, "id": target_id, "dismissed": bool(added)}


def resend_message(conn, message_id: int, user: str, confirm_uncertain: bool = False) -> dict[str, Any]:
    """Back to ``pending`` now; an ``uncertain`` one only when the operator confirmed a possible duplicate."""
    with conn.transaction():
        row = conn.execute("SELECT status, attempts, last_error, to_address FROM email_outbox WHERE id = %s"
                           " FOR UPDATE", (message_id,)).fetchone()
        if row is None:
            raise LookupError(f"no outbox message {message_id}")
        status, attempts, error, to = row
        if status not in ("failed", "uncertain"):
            raise NotRetryable(f"message {message_id} is {status}, not failed or uncertain")
        if status == "uncertain" and not confirm_uncertain:
            raise NotRetryable(f"message {message_id} is uncertain: the server may have accepted it already;"
                               " confirm to resend it (the recipient may get it twice)")
        conn.execute("UPDATE email_outbox SET status = 'pending', not_before = clock_timestamp(), claimed_by = NULL,"
                     " claimed_at = NULL WHERE id = %s", (message_id,))
        conn.execute("DELETE FROM failed_action_dismissals WHERE kind = 'message' AND target_id = %s", (message_id,))
        record(conn, user, "resend", "message", message_id, {"status": status, "attempts": attempts,
                                                             "error": error, "to": to})
    return {"id": message_id, "status": "pending"}


def reopen_charge(conn, invoice_id: int, user: str) -> dict[str, Any]:
    """Make a declined or refused invoice chargeable again (``open``), recorded.

    The charge itself is :func:`panelflow.services.payments.charge_due_invoices` for the invoice's
    billing day: it numbers the next attempt and its idempotency key (``pay:<number>:<n+1>``) as
    every charge does. Returns the billing day for that call.
    """
    with conn.transaction():
        row = conn.execute(
            "SELECT i.status, i.invoice_number, i.billing_date, a.attempt, a.status, a.gateway_message"
            " FROM invoices i JOIN LATERAL (SELECT * FROM payment_attempts a WHERE a.invoice_id = i.id"
            " ORDER BY a.attempt DESC LIMIT 1) a ON true WHERE i.id = %s FOR UPDATE OF i", (invoice_id,)).fetchone()
        if row is None:
            raise LookupError(f"no invoice {invoice_id} with a payment attempt")
        status, number, billing_date, attempt, attempt_status, message = row
        if status not in ("open", "payment_declined") or attempt_status not in ("declined", "error"):
            raise NotRetryable(f"invoice {number} is {status} (latest attempt {attempt_status}): nothing to retry")
        conn.execute("UPDATE invoices SET status = 'open' WHERE id = %s", (invoice_id,))
        conn.execute("DELETE FROM failed_action_dismissals WHERE kind = 'charge' AND target_id = %s", (invoice_id,))
        record(conn, user, "retry_charge", "charge", invoice_id, {"invoice": number, "attempt": attempt,
                                                                  "status": attempt_status, "message": message})
    return {"id": invoice_id, "invoice_number": number, "billing_date": billing_date, "previous_attempt": attempt}


def audit(conn, limit: int = 100) -> list[dict[str, Any]]:
    """The latest recorded actions, newest first."""
    return [{"at": _iso(r[0]), "user": r[1], "action": r[2], "kind": r[3], "target_id": r[4], "detail": r[5]}
            for r in conn.execute("SELECT at, username, action, target_kind, target_id, detail FROM automation_actions"
                                  " ORDER BY id DESC LIMIT %s", (limit,))]
