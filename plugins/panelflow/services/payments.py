"""Payments: charge the billing day's invoices (recurring, pay-per-use, SSL) to the saved cards on Stripe, once.

"Once" rests on the payment attempt, not on the run behaving: before any HTTP call the attempt
row (invoice, attempt number, idempotency key ``pay:<invoice number>:<attempt>``, profile,
amount) is committed as ``pending``. Whatever happens next — the answer lost, the worker killed
— the row says a charge may exist under that key, and the next try resends that same request
under that same key; the gateway then answers from its idempotency store instead of charging
again. A new attempt number (a new key, a possible new charge) is only ever made after a known
outcome that charged nothing: a decline, or a request the gateway refused outright.

A charge is a Stripe PaymentIntent confirmed off-session against the profile's PaymentMethod
(``gateway_token``) and Customer (``gateway_customer_id``); a profile whose card still waits to
be moved into Stripe's vault (``legacy_card_token``, ProvisioningWork 27) is skipped and named.
Stripe keeps idempotency keys for at least 24 hours; see ``KEY_RETENTION``.

A decline marks the invoice ``payment_declined`` and queues the customer's notice in the same
transaction; this step never charges a declined invoice again (an operator reopens it, as
``open``, once the customer has a working card: the next run makes the next attempt).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal

from panelflow.step import StepReport
from panelflow.hooks.payment_gateway import (
    ChargeApproved,
    ChargeDeclined,
    GatewayAuthenticationError,
    GatewayRequestRejected,
    GatewayUnavailable,
    IdempotencyKeyConflict,
    PaymentGatewayHook,
)
from panelflow.services.outbox import enqueue

log = logging.getLogger(__name__)

MAX_INVOICES = 500  # per run: each is one or more HTTP calls of up to the connection's timeout
BATCH = 50
IN_RUN_RETRIES = 2
RETRY_PAUSE = 0.5  # seconds before the first in-run resend, doubled for each further one
# Real gateways forget idempotency keys (Stripe: after 24 hours); resending an older key could
# charge again, so a pending attempt older than this is left for an operator to reconcile.
KEY_RETENTION = timedelta(hours=24)


def idempotency_key(invoice_number: str, attempt: int) -> str:
    return f"pay:{invoice_number}:{attempt}"


@dataclass(frozen=True)
class _Attempt:
    """One charge request, exactly as first sent: every resend is rebuilt from the attempt row."""

    id: int
    invoice_id: int
    invoice_number: str
    customer_id: int
    attempt: int
    key: str
    payment_method: str
    gateway_customer: str
    amount: Decimal
    currency: str
    minor_units: int
    card: str | None

    @property
    def amount_minor(self) -> int:
        return int(self.amount.scaleb(self.minor_units))

    def send(self, hook: PaymentGatewayHook):
        # Nothing here may depend on anything but the attempt row: another body under the
        # same key is refused by the gateway (and the first request's fate stays unknown).
        return hook.charge(payment_method=self.payment_method, customer=self.gateway_customer,
                           amount_minor=self.amount_minor, currency=self.currency, idempotency_key=self.key,
                           description=f"Invoice {self.invoice_number}",
                           metadata={"invoice_number": self.invoice_number, "attempt": str(self.attempt),
                                     "customer_id": str(self.customer_id)})


_DUE = """
SELECT i.id FROM invoices i
WHERE i.kind IN ('recurring', 'ppu', 'ssl') AND i.status = 'open' AND i.total > 0
  AND i.billing_date >= %(first_day)s AND i.billing_date < %(end_day)s AND i.id > %(after)s
ORDER BY i.id LIMIT %(limit)s
"""

# The invoice, locked while its attempt is chosen, so two workers never number attempts apart.
_INVOICE = """
SELECT i.invoice_number, i.customer_id, i.total, i.currency, i.status, cur.minor_units
FROM invoices i LEFT JOIN currencies cur ON cur.code = i.currency
WHERE i.id = %s FOR UPDATE OF i
"""

_LATEST_ATTEMPT = """
SELECT a.id, a.attempt, a.status, a.idempotency_key, a.amount, a.currency, cur.minor_units, p.gateway_token,
       p.gateway_customer_id, p.card_brand, p.card_last4, a.created_at < clock_timestamp() - %s AS beyond_key_retention
FROM payment_attempts a
JOIN payment_profiles p ON p.id = a.payment_profile_id
LEFT JOIN currencies cur ON cur.code = a.currency
WHERE a.invoice_id = %s ORDER BY a.attempt DESC LIMIT 1
"""


def _card(brand: str | None, last4: str | None) -> str | None:
    if not last4:
        return None
    return f"{brand or 'card'} ending {last4}"


def charge_due_invoices(conn, hook: PaymentGatewayHook, *, first_day: date, end_day: date, clock: datetime,
                        report: StepReport, max_invoices: int = MAX_INVOICES, batch_size: int = BATCH,
                        in_run_retries: int = IN_RUN_RETRIES, retry_pause: float = RETRY_PAUSE,
                        key_retention: timedelta = KEY_RETENTION) -> dict:
    """Charge the open recurring, pay-per-use and SSL invoices billed on ``[first_day, end_day)`` (at most ``max_invoices``).

    ``clock`` (the run's data-interval end) dates the decline notices. Counts go to ``report``
    (charged, declined, unresolved, gateway_requests; skips with their reasons) and are returned,
    with the invoices whose outcome is still unknown: the caller fails the task when there are
    any, and Airflow's retry resends their requests under the same keys.

    ``conn`` must not be inside a transaction: every attempt is committed before its HTTP call,
    which a caller's open transaction would silently turn into a savepoint.
    """
    if max_invoices < 1 or batch_size < 1 or in_run_retries < 0:
        raise ValueError("max_invoices and batch_size must be positive, in_run_retries not negative")
    from psycopg.pq import TransactionStatus

    if conn.info.transaction_status != TransactionStatus.IDLE:
        raise RuntimeError("charge_due_invoices needs a connection outside a transaction: commit or roll back first")
    run = _PaymentRun(conn, hook, clock, report, in_run_retries, retry_pause, key_retention)
    autocommit = conn.autocommit
    conn.autocommit = True  # statements outside transaction() blocks must not open an implicit one
    try:
        looked = 0
        after = 0
        while looked < max_invoices:
            ids = [r[0] for r in conn.execute(_DUE, {"first_day": first_day, "end_day": end_day, "after": after,
                                                     "limit": min(batch_size, max_invoices - looked)}).fetchall()]
            if not ids:
                break
            for invoice_id in ids:
                run.settle(invoice_id)
            looked += len(ids)
            after = ids[-1]
        else:
            report.add("max_invoices_reached")
    finally:
        conn.autocommit = autocommit
    return {**run.counts, "unresolved_invoices": run.unresolved[:50]}


class _PaymentRun:
    def __init__(self, conn, hook, clock, report, in_run_retries, retry_pause, key_retention):
        self.conn = conn
        self.hook = hook
        self.clock = clock
        self.report = report
        self.in_run_retries = in_run_retries
        self.retry_pause = retry_pause
        self.key_retention = key_retention
        self.counts = {"charged": 0, "declined": 0, "unresolved": 0, "skipped": 0}
        self.unresolved: list[str] = []

    def count(self, key: str) -> None:
        self.counts[key] += 1
        self.report.add(key)

    def skip(self, reason: str, invoice_number: str) -> None:
        self.counts["skipped"] += 1
        self.report.skip(reason, f"invoice {invoice_number}")

    # -- one invoice ----------------------------------------------------------------------------

    def settle(self, invoice_id: int) -> None:
        attempt = self.claim(invoice_id)
        if attempt is None:
            return
        result = None
        for try_number in range(self.in_run_retries + 1):
            if try_number:
                time.sleep(self.retry_pause * 2 ** (try_number - 1))
                if not self.count_request(attempt):
                    return  # another worker settled it meanwhile
            try:
                result = attempt.send(self.hook)
                break
            except GatewayUnavailable as exc:
                error = exc
            except IdempotencyKeyConflict as exc:  # resending cannot tell what the first request did
                error = exc
                break
            except GatewayAuthenticationError:
                raise  # every invoice would fail alike; the attempt stays pending (nothing was executed)
            except GatewayRequestRejected as exc:
                self.rejected(attempt, exc)
                return
        if result is None:
            self.leave_pending(attempt, error)
        elif isinstance(result, ChargeApproved):
            self.approved(attempt, result)
        elif isinstance(result, ChargeDeclined):
            self.declined(attempt, result)

    def claim(self, invoice_id: int) -> _Attempt | None:
        """The attempt to send for this invoice — its pending one, else a new one — committed."""
        with self.conn.transaction():
            row = self.conn.execute(_INVOICE, (invoice_id,)).fetchone()
            if row is None:
                return None
            number, customer_id, total, currency, status, minor_units = row
            if status != "open":
                return None  # settled by another worker since the batch was read
            latest = self.conn.execute(_LATEST_ATTEMPT, (self.key_retention, invoice_id)).fetchone()
            if latest is not None:
                (attempt_id, attempt_no, attempt_status, key, amount, attempt_currency, attempt_minor_units, method,
                 gateway_customer, brand, last4, beyond_retention) = latest
                if attempt_status == "pending":
                    if beyond_retention:
                        self.skip("pending payment attempt older than the gateway keeps idempotency keys;"
                                  " reconcile with the gateway before charging", number)
                        return None
                    self.conn.execute("UPDATE payment_attempts SET requests = requests + 1 WHERE id = %s",
                                      (attempt_id,))
                    self.report.add("gateway_requests")
                    self.report.add("resent")
                    return _Attempt(attempt_id, invoice_id, number, customer_id, attempt_no, key, method,
                                    gateway_customer, amount, attempt_currency, attempt_minor_units,
                                    _card(brand, last4))
                if attempt_status == "approved":
                    self.skip("open invoice with an approved payment attempt; not charged again", number)
                    return None
            next_attempt = latest[1] + 1 if latest is not None else 1
            profile = self.conn.execute(
                "SELECT id, gateway_token, gateway_customer_id, card_brand, card_last4,"
                " legacy_card_token IS NULL AND gateway_token IS NOT NULL AND gateway_customer_id IS NOT NULL"
                " FROM payment_profiles WHERE customer_id = %s AND is_default", (customer_id,)).fetchone()
            if profile is None:
                self.skip("no payment profile", number)
                return None
            if not profile[5]:
                self.skip("card not yet in Stripe's vault (ProvisioningWork 27 moves it)", number)
                return None
            if minor_units is None:
                self.skip(f"unknown currency {currency}", number)
                return None
            if total.scaleb(minor_units) != total.scaleb(minor_units).to_integral_value():
                self.skip(f"total {total} has more decimals than {currency} has minor units", number)
                return None
            key = idempotency_key(number, next_attempt)
            (attempt_id,) = self.conn.execute(
                "INSERT INTO payment_attempts (invoice_id, attempt, idempotency_key, payment_profile_id, amount,"
                " currency, status, requests) VALUES (%s, %s, %s, %s, %s, %s, 'pending', 1) RETURNING id",
                (invoice_id, next_attempt, key, profile[0], total, currency)).fetchone()
            self.report.add("gateway_requests")
        return _Attempt(attempt_id, invoice_id, number, customer_id, next_attempt, key, profile[1], profile[2], total,
                        currency, minor_units, _card(profile[3], profile[4]))

    def count_request(self, attempt: _Attempt) -> bool:
        """Record one more request under the attempt's key, committed before it is sent."""
        with self.conn.transaction():
            still_pending = self.conn.execute(
                "UPDATE payment_attempts SET requests = requests + 1 WHERE id = %s AND status = 'pending'",
                (attempt.id,)).rowcount
        if still_pending:
            self.report.add("gateway_requests")
        return bool(still_pending)

    # -- outcomes -------------------------------------------------------------------------------

    def approved(self, attempt: _Attempt, charge: ChargeApproved) -> None:
        with self.conn.transaction():
            if not self.conn.execute(
                    "UPDATE payment_attempts SET status = 'approved', gateway_charge_id = %s, gateway_code = NULL,"
                    " gateway_message = NULL, finished_at = clock_timestamp() WHERE id = %s AND status = 'pending'",
                    (charge.payment_intent_id, attempt.id)).rowcount:
                return  # recorded by another worker that got the same (replayed) answer
            # paid_on is the day the gateway charged the card: what its settlement reports show
            payment = self.conn.execute(
                "INSERT INTO payments (invoice_id, payment_attempt_id, amount, currency, gateway_charge_id, paid_on)"
                " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING id",
                (attempt.invoice_id, attempt.id, attempt.amount, attempt.currency, charge.payment_intent_id,
                 charge.created.date())).fetchone()
            if payment is None:  # cannot happen through this step; if it does, someone must refund
                self.skip(f"invoice already has a payment; PaymentIntent {charge.payment_intent_id} needs a refund",
                          attempt.invoice_number)
                return
            self.conn.execute("UPDATE invoices SET status = 'paid', paid_at = %s WHERE id = %s AND status = 'open'",
                              (charge.created, attempt.invoice_id))
        self.count("charged")

    def declined(self, attempt: _Attempt, decline: ChargeDeclined) -> None:
        with self.conn.transaction():  # the status and its notice together, or neither
            if not self.conn.execute(
                    "UPDATE payment_attempts SET status = 'declined', gateway_code = %s, gateway_message = %s,"
                    " finished_at = clock_timestamp() WHERE id = %s AND status = 'pending'",
                    (decline.code[:100], decline.message[:500], attempt.id)).rowcount:
                return
            self.conn.execute("UPDATE invoices SET status = 'payment_declined' WHERE id = %s AND status = 'open'",
                              (attempt.invoice_id,))
            name, email = self.conn.execute("SELECT name, email FROM customers WHERE id = %s",
                                            (attempt.customer_id,)).fetchone()
            if email and email.strip():
                enqueue(self.conn, dedupe_key=f"payment-declined:{attempt.invoice_number}:{attempt.attempt}",
                        to=email.strip(), template="payment_declined", not_before=self.clock,
                        context={"customer_name": name, "invoice_number": attempt.invoice_number,
                                 "amount": f"{attempt.amount:,.{attempt.minor_units}f}", "currency": attempt.currency,
                                 "card": attempt.card, "reason": decline.message})
            else:
                self.skip("payment declined; customer has no e-mail address for the notice", attempt.invoice_number)
        self.count("declined")

    def rejected(self, attempt: _Attempt, exc: GatewayRequestRejected) -> None:
        """The gateway refused the request without executing it: known uncharged, the invoice stays open."""
        with self.conn.transaction():
            self.conn.execute(
                "UPDATE payment_attempts SET status = 'error', gateway_code = %s, gateway_message = %s,"
                " finished_at = clock_timestamp() WHERE id = %s AND status = 'pending'",
                (exc.code or f"http_{exc.http_status}", str(exc)[:500], attempt.id))
        self.skip(f"gateway refused the charge request (HTTP {exc.http_status})", attempt.invoice_number)

    def leave_pending(self, attempt: _Attempt, exc: Exception) -> None:
        """Outcome unknown: the attempt stays pending, so the next try resends the same key."""
        with self.conn.transaction():
            self.conn.execute("UPDATE payment_attempts SET gateway_message = %s WHERE id = %s AND status = 'pending'",
                              (f"no outcome yet: {exc}"[:500], attempt.id))
        log.warning("payment of invoice %s unresolved (key %s): %s", attempt.invoice_number, attempt.key, exc)
        self.unresolved.append(attempt.invoice_number)
        self.count("unresolved")
