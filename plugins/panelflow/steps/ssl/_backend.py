"""What the DigiCert and Sectigo steps share: the pending orders, verifying what a vendor issued,
storing it once, and the loop over orders with its one failure rule.

**Verification** — a vendor's "issued" is not taken on trust; a certificate is stored only when

1. its public key is the order's CSR's (and the CSR's own signature verifies): a certificate for
   another key would be useless to the customer and means a mix-up or worse;
2. it is valid at the run's clock (``interval.end``, so a rerun judges as the first run did);
3. it covers every name the order asked for (common name and SANs, in its subjectAltName);
4. the chain the vendor sent builds to a trusted root — the connection's ``ca_bundle`` or, by
   default, the Mozilla roots of ``certifi`` — under RFC 5280 / Web PKI rules (``cryptography``'s
   verifier: signatures, CA constraints, validity of every link, serverAuth).

A refused certificate is not stored: the order stays ``pending`` with the reason in
``last_error`` (and the step's summary), and is asked about again after the poll interval — a
vendor that reissues correctly then gets it stored.

**Once only** — storing is one transaction: the certificate row (``UNIQUE (ssl_order_id,
serial)``) and the order's ``issued`` mark. A rerun, a retry or a worker killed in between finds
the order issued, or stores the same serial again as nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from panelflow.step import StepReport, for_each

MAX_ORDERS_PER_RUN = 500    # vendor requests per run, bounded; the rest are next run's (oldest-checked first)
MAX_CHAIN_DEPTH = 6

PENDING = """
SELECT id, vendor_order_id, common_name, sans, csr FROM ssl_orders
WHERE vendor = %(vendor)s AND status = 'pending'
  AND (checked_at IS NULL OR checked_at <= %(clock)s::timestamptz - %(poll)s)
ORDER BY checked_at NULLS FIRST, id
LIMIT %(limit)s
"""

ANY_PENDING = "SELECT EXISTS (SELECT 1 FROM ssl_orders WHERE vendor = %s AND status = 'pending')"

STORE = """
INSERT INTO ssl_certificates (ssl_order_id, serial, not_before, not_after, fingerprint_sha256, certificate_pem,
                              chain_pem, stored_at)
VALUES (%(id)s, %(serial)s, %(not_before)s, %(not_after)s, %(fingerprint)s, %(leaf)s, %(chain)s, %(clock)s)
ON CONFLICT (ssl_order_id, serial) DO NOTHING
"""

# The order's state from the vendor's answer; ``cost`` only when the vendor told its price.
SETTLE = """
UPDATE ssl_orders
SET status = %(status)s, vendor_status = %(vendor_status)s, checked_at = %(clock)s, last_error = %(error)s,
    vendor_certificate_id = coalesce(%(certificate_id)s, vendor_certificate_id),
    issued_at = CASE WHEN %(status)s = 'issued' THEN coalesce(issued_at, %(clock)s) END,
    cost = coalesce(%(cost)s, cost), cost_currency = coalesce(%(cost_currency)s, cost_currency)
WHERE id = %(id)s AND status = 'pending'
"""

FAILED = "UPDATE ssl_orders SET checked_at = %s, last_error = %s WHERE id = %s AND status = 'pending'"


@dataclass(frozen=True)
class PendingOrder:
    id: int
    vendor_order_id: str
    common_name: str
    sans: list[str]
    csr: str

    @property
    def names(self) -> set[str]:
        return {n.lower() for n in (self.common_name, *self.sans)}


@dataclass(frozen=True)
class VendorAnswer:
    """What a vendor said about an order, in the panel's words (``state``: pending, issued,
    rejected, cancelled, revoked). An ``issued`` answer always carries the certificate and the
    chain the vendor sent (the vendor's ``ask`` raises its own error otherwise); ``cost`` is the
    vendor's price when its answer tells it."""

    state: str
    vendor_status: str | None
    leaf_pem: str | None = None
    chain_pems: tuple[str, ...] = ()
    certificate_id: str | None = None
    cost: Decimal | None = None
    cost_currency: str | None = None


@dataclass(frozen=True)
class Verified:
    serial: str
    not_before: datetime
    not_after: datetime
    fingerprint: str
    leaf_pem: str
    chain_pem: str  # the verified path above the leaf, issuer first, up to the trusted root


class Refused(Exception):
    """The vendor's certificate failed verification; the message says why."""


def utc(moment) -> datetime:
    """The run's clock as a plain aware ``datetime`` (``interval.end`` may be a pendulum one)."""
    return datetime.fromtimestamp(moment.timestamp(), tz=timezone.utc)


def trust_anchors(ca_bundle: str | None) -> list:
    """The roots a chain must build to: the connection's PEM file, else ``certifi``'s Mozilla roots."""
    import certifi
    from cryptography import x509

    with open(ca_bundle or certifi.where(), "rb") as bundle:
        return x509.load_pem_x509_certificates(bundle.read())


def _name_to_verify(order: PendingOrder) -> str:
    """A host name the certificate must serve: the first non-wildcard name the order asked for
    (a verifier takes a concrete host), else a host under the wildcard."""
    names = [order.common_name, *order.sans]
    return next((n for n in names if not n.startswith("*.")), "wildcard-check." + names[0][2:]).lower()


def verify(order: PendingOrder, leaf_pem: str, chain_pems: tuple[str, ...], *, roots: list,
           clock: datetime) -> Verified:
    """The vendor's certificate, checked (see the module's docstring), or :class:`Refused`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    try:
        leaf = x509.load_pem_x509_certificate(leaf_pem.encode())
        intermediates = [x509.load_pem_x509_certificate(p.encode()) for p in chain_pems]
    except ValueError as exc:
        raise Refused(f"not a certificate: {exc}") from exc
    try:
        csr = x509.load_pem_x509_csr(order.csr.encode())
    except ValueError as exc:
        raise Refused(f"the order's CSR is unreadable: {exc}") from exc
    if not csr.is_signature_valid:
        raise Refused("the order's CSR signature does not verify")
    if leaf.public_key().public_bytes(der, spki) != csr.public_key().public_bytes(der, spki):
        raise Refused("the certificate's public key is not the CSR's (issued for another key)")
    not_before, not_after = leaf.not_valid_before_utc, leaf.not_valid_after_utc
    if clock < not_before:
        raise Refused(f"not valid yet at {clock:%Y-%m-%d %H:%M} UTC (valid from {not_before:%Y-%m-%d %H:%M})")
    if clock >= not_after:
        raise Refused(f"expired at {clock:%Y-%m-%d %H:%M} UTC (valid until {not_after:%Y-%m-%d %H:%M})")
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        covered = {n.lower() for n in san.get_values_for_type(x509.DNSName)}
    except x509.ExtensionNotFound:
        covered = set()
    missing = sorted(order.names - covered)
    if missing:
        raise Refused(f"the certificate does not name {', '.join(missing)} (it names {', '.join(sorted(covered))})")
    verifier = (PolicyBuilder().store(Store(roots)).time(clock).max_chain_depth(MAX_CHAIN_DEPTH)
                .build_server_verifier(x509.DNSName(_name_to_verify(order))))
    try:
        path = verifier.verify(leaf, intermediates)
    except VerificationError as exc:
        raise Refused(f"the chain does not verify to a trusted root: {str(exc).split(' (encountered')[0]}") from exc
    pem = serialization.Encoding.PEM
    return Verified(serial=format(leaf.serial_number, "X"), not_before=not_before, not_after=not_after,
                    fingerprint=leaf.fingerprint(hashes.SHA256()).hex(), leaf_pem=leaf.public_bytes(pem).decode(),
                    chain_pem="".join(c.public_bytes(pem).decode() for c in path[1:]))


def settle(conn, order: PendingOrder, answer: VendorAnswer, *, roots: list, clock: datetime,
           report: StepReport) -> None:
    """Record the vendor's answer: the verified certificate and the order issued (one transaction),
    a refused certificate's reason, the vendor's end of the order, or that it is still pending."""
    args = {"id": order.id, "clock": clock, "status": answer.state, "vendor_status": answer.vendor_status,
            "error": None, "certificate_id": answer.certificate_id, "cost": answer.cost,
            "cost_currency": answer.cost_currency}
    if answer.state == "issued":
        try:
            verified = verify(order, answer.leaf_pem, answer.chain_pems, roots=roots, clock=clock)
        except Refused as exc:
            report.add("certificates_refused")
            report.skip("certificate refused", f"order {order.vendor_order_id}: {exc}")
            conn.execute(SETTLE, {**args, "status": "pending", "error": f"certificate refused: {exc}"[:500]})
            return
        with conn.transaction():
            stored = conn.execute(STORE, {"id": order.id, "serial": verified.serial, "clock": clock,
                                          "not_before": verified.not_before, "not_after": verified.not_after,
                                          "fingerprint": verified.fingerprint, "leaf": verified.leaf_pem,
                                          "chain": verified.chain_pem}).rowcount
            conn.execute(SETTLE, args)
        report.add("certificates_stored", stored)
        return
    conn.execute(SETTLE, args)
    report.add(f"orders_{answer.state}")


def check_pending_orders(conn, *, vendor: str, hook, ask: Callable[[PendingOrder], VendorAnswer],
                         vendor_error: type[Exception], fatal: type[Exception], clock: datetime, log: Any) -> dict:
    """Ask the vendor about each pending order due a check (oldest-checked first, at most
    :data:`MAX_ORDERS_PER_RUN`) and settle its answer.

    The failure rule is :func:`panelflow.step.for_each`'s: an order whose request fails
    (``vendor_error``) is counted, its reason kept on the row and in the summary, and the others
    go on; every order failing fails the task. ``fatal`` (the account's credentials refused) fails
    it at once: every other order would fail the same way.
    """
    report = StepReport().zero("orders_checked", "orders_checked_failed", "orders_pending", "orders_rejected",
                               "orders_cancelled", "orders_revoked", "certificates_stored", "certificates_refused")
    if not conn.execute(ANY_PENDING, (vendor,)).fetchone()[0]:
        return report.as_dict()  # a provider without this vendor needs no connection to it
    hook.get_conn()  # the connection's settings: poll interval, trust anchors
    roots = trust_anchors(hook.ca_bundle)
    rows = conn.execute(PENDING, {"vendor": vendor, "clock": clock, "poll": timedelta(minutes=hook.poll_minutes),
                                  "limit": MAX_ORDERS_PER_RUN}).fetchall()
    orders = [PendingOrder(*row) for row in rows]

    def reason(exc: BaseException) -> str | None:
        if isinstance(exc, fatal) or not isinstance(exc, vendor_error):
            return None
        return f"{type(exc).__name__}: {exc}"

    for_each(orders, lambda order: settle(conn, order, ask(order), roots=roots, clock=clock, report=report),
             report=report, kind="order", plural="orders_checked", name=lambda o: o.vendor_order_id,
             reason=reason, log=log, what=f"{vendor} order",
             on_failure=lambda order, exc, why: conn.execute(FAILED, (clock, why[:500], order.id)))
    return report.as_dict()
