"""IngramCancelNoticesWork: submit the panel's Ingram Micro cancellations in their notice window, once.

A cancellation (``ingram_cancellations``, written by the panel's subscription page) asks to end an
Ingram subscription at the end of its term. Ingram must hear of it within the subscription's notice
window — ``notice_window_days`` before ``term_end`` — so each daily run (its day: ``interval.end``
in the thread's time zone) submits the cancellations whose window is open, and a cancellation
whose term ended before it could be submitted is ``missed``.

**Exactly once.** Ingram documents no idempotency for its order cancel, so the step makes sure a
cancel is sent blind only once:

1. the cancellation is claimed — ``submitting`` with a new ``IM-CorrelationID`` — and that is
   committed before the request goes out;
2. holding the row (``FOR UPDATE SKIP LOCKED``: a racing run skips it) the cancel is sent and
   the outcome settled in the same transaction as its e-mail;
3. a cancel whose answer was lost (timeout, dropped connection, 5xx; or a worker killed in step 2)
   stays ``submitting``: the next attempt first reads the order back — already ``CANCELLED``
   settles it without a second cancel; otherwise it is resent under the same correlation id.

Each cancellation ends ``cancelled`` (the subscription is marked cancelled too), ``refused``
(Ingram's reason kept) or ``missed``, and exactly one e-mail (``ingram_cancellation_notice``,
outbox key ``ingram-cancellation:<id>``) tells the requester (``notify_email``, else the customer).

The failure rule is :func:`panelflow.step.for_each`'s, one cancellation an endpoint: one that
Ingram could not be asked about is counted and left for the retry or the next run; every one
failing fails the task. Credentials refused fail it at once.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import date, datetime, timezone
from zoneinfo import ZoneInfo

from panelflow.services.outbox import enqueue
from panelflow.step import StepReport, for_each

TEMPLATE = "ingram_cancellation_notice"
PER_RUN = 500
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")

# Open cancellations whose window has opened (or which await reconciling), soonest term first.
DUE = """
SELECT c.id, c.status, c.correlation_id, c.term_end, c.requested_by, c.requested_at, c.notify_email,
       s.id, s.conn_id, s.ingram_subscription_id, s.ingram_order_number, coalesce(s.product, s.ingram_subscription_id),
       cu.name, btrim(cu.email), coalesce(pr.name, '')
FROM ingram_cancellations c
JOIN ingram_subscriptions s ON s.id = c.ingram_subscription_id
JOIN customers cu ON cu.id = s.customer_id
LEFT JOIN providers pr ON pr.id = cu.provider_id
WHERE c.status IN ('requested', 'submitting') AND c.requested_at <= %(clock)s
  AND (c.status = 'submitting' OR c.term_end - s.notice_window_days <= %(day)s)
ORDER BY c.term_end, c.id
LIMIT %(limit)s
"""

CLAIM = """
UPDATE ingram_cancellations SET status = 'submitting', correlation_id = %(correlation)s, submitted_at = %(clock)s,
       attempts = attempts + 1
WHERE id = %(id)s AND status = 'requested'
RETURNING correlation_id
"""

HOLD = "SELECT correlation_id FROM ingram_cancellations WHERE id = %s AND status = 'submitting' FOR UPDATE SKIP LOCKED"
RESEND = "UPDATE ingram_cancellations SET attempts = attempts + 1 WHERE id = %s"
FAILED = "UPDATE ingram_cancellations SET last_error = %s WHERE id = %s AND status IN ('requested', 'submitting')"

SETTLE = """
UPDATE ingram_cancellations SET status = %(status)s, completed_at = %(clock)s, ingram_status = %(ingram_status)s,
       last_error = %(error)s, notice_queued_at = CASE WHEN %(queued)s THEN %(clock)s END
WHERE id = %(id)s AND status IN ('requested', 'submitting')
RETURNING id
"""


@dataclass(frozen=True)
class Cancellation:
    id: int
    status: str
    correlation_id: str | None
    term_end: date
    requested_by: str
    requested_at: datetime
    notify_email: str | None
    subscription_row: int
    conn_id: str
    ingram_subscription_id: str
    order_number: str
    product: str
    customer_name: str
    customer_email: str | None
    provider: str


def send_ingram_cancel_notices(panel_db, interval, log=None) -> dict:
    """Send Ingram cancel notices: submit each requested cancellation inside its notice window, once."""
    from panelflow.hooks.ingram import IngramAuthenticationError, IngramError, IngramHook

    clock = datetime.fromtimestamp(interval.end.timestamp(), tz=timezone.utc)
    day = interval.end.astimezone(ZoneInfo(interval.tz)).date()
    report = StepReport().zero("cancellations", "cancellations_failed", "cancelled", "refused", "missed",
                               "reconciled", "notices_queued")
    hooks: dict[str, IngramHook] = {}

    def hook_for(conn_id: str) -> IngramHook:
        if conn_id not in hooks:
            hooks[conn_id] = IngramHook(conn_id)
        return hooks[conn_id]

    def reason(exc: BaseException) -> str | None:
        from airflow.exceptions import AirflowNotFoundException

        if isinstance(exc, IngramAuthenticationError):
            return None  # every cancellation of the account fails alike: fail the task now
        if isinstance(exc, (IngramError, AirflowNotFoundException, ValueError)):
            return f"{type(exc).__name__}: {exc}"
        return None

    with panel_db.get_conn() as conn:
        conn.autocommit = True
        rows = conn.execute(DUE, {"clock": clock, "day": day, "limit": PER_RUN}).fetchall()
        due = [Cancellation(*row) for row in rows]
        try:
            for_each(due, lambda c: _work(conn, hook_for(c.conn_id), c, clock, day, report, log), report=report,
                     kind="cancellation", name=lambda c: f"{c.id} ({c.ingram_subscription_id})", reason=reason,
                     log=log, what="Ingram cancellation",
                     on_failure=lambda c, exc, why: conn.execute(FAILED, (why[:500], c.id)))
        finally:
            for hook in hooks.values():
                hook.close()
    if len(due) == PER_RUN:
        report.add("cancellations_deferred")  # more may wait: the next run takes them
    return report.as_dict()


def _work(conn, hook, c: Cancellation, clock: datetime, day: date, report: StepReport, log) -> None:
    if c.status == "requested" and day >= c.term_end:
        with conn.transaction():
            _settle(conn, c, "missed", clock, report, error="the term ended before the cancellation was submitted")
        return
    hook.get_conn()  # the account's connection must be usable before anything is claimed for it
    fresh = False
    if c.status == "requested":
        claimed = conn.execute(CLAIM, {"correlation": str(uuid.uuid4()), "clock": clock, "id": c.id}).fetchone()
        if claimed is None:
            return  # another run claimed it meanwhile
        fresh = True
    _submit(conn, hook, c, clock, day, report, fresh=fresh, log=log)


def _submit(conn, hook, c: Cancellation, clock: datetime, day: date, report: StepReport, *, fresh: bool, log) -> None:
    """Send (or reconcile, then resend) the cancel while holding the row; settle with its e-mail."""
    from panelflow.hooks.ingram import IngramAuthenticationError, IngramRefused

    with conn.transaction():
        held = conn.execute(HOLD, (c.id,)).fetchone()
        if held is None:
            return  # settled or held by a racing run
        correlation_id = held[0]
        try:
            if not fresh:  # an earlier attempt's outcome is unknown: ask Ingram before sending again
                order = hook.order_status(c.order_number, correlation_id=correlation_id)
                if order.cancelled:
                    report.add("reconciled")
                    _settle(conn, c, "cancelled", clock, report, ingram_status=order.status,
                            correlation_id=correlation_id)
                    return
                if day >= c.term_end:
                    _settle(conn, c, "missed", clock, report, ingram_status=order.status,
                            correlation_id=correlation_id,
                            error="the term ended before Ingram confirmed the cancellation")
                    return
                conn.execute(RESEND, (c.id,))
            hook.cancel_order(c.order_number, correlation_id=correlation_id)
        except IngramRefused as exc:
            if isinstance(exc, IngramAuthenticationError):
                raise  # the account's credentials, not this cancellation: the task fails
            _settle(conn, c, "refused", clock, report, error=str(exc)[:500], correlation_id=correlation_id)
            if log is not None:
                log.warning("Ingram refused cancellation %s: %s", c.id, exc)
            return
        _settle(conn, c, "cancelled", clock, report, ingram_status="CANCELLED", correlation_id=correlation_id)


def _settle(conn, c: Cancellation, outcome: str, clock: datetime, report: StepReport, *,
            ingram_status: str | None = None, error: str | None = None, correlation_id: str | None = None) -> None:
    """The cancellation's end and its one e-mail (call inside a transaction); nothing if another run ended it."""
    to = (c.notify_email or c.customer_email or "").strip()
    queued = bool(EMAIL.match(to))
    if conn.execute(SETTLE, {"status": outcome, "clock": clock, "ingram_status": ingram_status, "error": error,
                             "queued": queued, "id": c.id}).fetchone() is None:
        return
    if queued:
        queued = enqueue(conn, dedupe_key=f"ingram-cancellation:{c.id}", to=to, template=TEMPLATE, not_before=clock,
                         context={"customer_name": c.customer_name, "product": c.product, "outcome": outcome,
                                  "ingram_subscription_id": c.ingram_subscription_id,
                                  "term_end": c.term_end.isoformat(), "error": error or "",
                                  "requested_by": c.requested_by, "requested_on": c.requested_at.date().isoformat(),
                                  "reference": correlation_id or "not submitted", "provider": c.provider})
    else:
        report.skip("nobody to tell: no usable e-mail address", f"cancellation {c.id}")
    if outcome == "cancelled":
        conn.execute("UPDATE ingram_subscriptions SET status = 'cancelled' WHERE id = %s", (c.subscription_row,))
    report.add(outcome)
    report.add("notices_queued", queued)
