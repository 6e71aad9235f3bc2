"""ProvisioningWork 27, "Verify and create PCI credit profiles for existing cards": card references
from before Stripe moved into Stripe's vault, once (columns: migration 0027).

BillingWork charges a saved card as a Stripe PaymentMethod attached to a Stripe Customer. A
payment profile from before holds only ``legacy_card_token``, a card token (never a number:
the panel never had one); Stripe imports a token as a PaymentMethod (``POST /v1/payment_methods``
with ``card[token]``). Verifying the card is Stripe's part: it refuses a token it does not know or
that was used already, and checks the card when it is attached to the Customer.

Each profile still to move (legacy reference set, no ``vault_error``), in id order, at most
``MAX_PROFILES`` a run:

1. **PaymentMethod** from the token, under the idempotency key ``vault-card:<profile id>`` (a token
   Stripe refuses costs nothing more); its id is committed at once (``gateway_token``, legacy
   reference still set: not yet chargeable).
2. **Customer** — the one another profile of the same panel customer already names; else the one
   Stripe finds with ``metadata[panel_customer_id]``; else a new one, created under
   ``vault-customer:<panel customer id>``. Recorded on every profile of that customer at once.
3. **Attach** the PaymentMethod to the Customer under ``vault-attach:<profile id>`` (not sent when
   Stripe already shows it attached); then one statement records brand and last four digits as
   Stripe shows them and clears the legacy reference: from then on BillingWork charges the profile.

Each result is committed before the next request, so a run killed anywhere resumes at the request
it died in, under the same key: Stripe replays the first answer instead of making a second Customer
or PaymentMethod. Keys live at least 24 hours at Stripe; after that, step 2 still finds the Customer
by its metadata (Stripe's search lags by about a minute). The one case left to an operator: a worker
killed between Stripe creating the PaymentMethod and step 1's commit, retried more than 24 hours
later — the token is spent, Stripe refuses it, and the profile gets a ``vault_error``. A card
Stripe declines when it is attached leaves its Customer behind, without a card (Stripe checks a
card only then).

A refusal (token unknown or spent, card declined when attached, PaymentMethod attached elsewhere)
is recorded in ``vault_error`` and named in the report; the profile waits for an operator. No answer
(timeout, 5xx, 429, a key in flight) leaves the profile where it is and fails the task once the rest
is done, so Airflow's retry resends the same requests. A refused secret key fails at once.
"""

from __future__ import annotations

from dataclasses import dataclass

from panelflow.hooks.payment_gateway import (
    GatewayAuthenticationError,
    GatewayRequestRejected,
    GatewayUnavailable,
    IdempotencyKeyConflict,
    PaymentGatewayHook,
    VaultedCard,
)
from panelflow.step import StepReport, first_line

MAX_PROFILES = 500  # per run: each is up to four requests of up to the connection's timeout
BATCH = 50
CUSTOMER_METADATA = "panel_customer_id"
PROFILE_METADATA = "panel_payment_profile_id"

_TO_MOVE = """
SELECT p.id, p.customer_id, p.legacy_card_token, p.gateway_token, p.gateway_customer_id, c.name, c.email
FROM payment_profiles p JOIN customers c ON c.id = p.customer_id
WHERE p.legacy_card_token IS NOT NULL AND p.vault_error IS NULL AND p.id > %s
ORDER BY p.id LIMIT %s
"""


@dataclass(frozen=True)
class _Profile:
    id: int
    customer_id: int
    token: str
    payment_method: str | None
    gateway_customer: str | None
    name: str | None
    email: str | None


class VaultIncomplete(RuntimeError):
    """Stripe gave no answer for some profiles: the task fails so Airflow's retry resends their requests."""


def create_pci_credit_profiles(panel_db, log) -> dict:
    """Move the payment profiles' legacy card references into Stripe's vault (see the module)."""
    report = StepReport().zero("profiles_vaulted", "customers_created", "vault_refused", "unresolved")
    with panel_db.get_conn() as conn, PaymentGatewayHook() as gateway:
        conn.autocommit = True  # every result committed before the next request
        unresolved = _move_all(conn, gateway, report, log)
    summary = report.as_dict()
    if unresolved:
        log.error("vault summary: %s", summary)
        raise VaultIncomplete(f"{len(unresolved)} payment profile(s) without an answer from Stripe"
                              f" ({', '.join(map(str, unresolved[:10]))}); the retry resends the same requests")
    return summary


def _move_all(conn, gateway: PaymentGatewayHook, report: StepReport, log) -> list[int]:
    unresolved: list[int] = []
    after, looked = 0, 0
    while looked < MAX_PROFILES:
        rows = conn.execute(_TO_MOVE, (after, min(BATCH, MAX_PROFILES - looked))).fetchall()
        if not rows:
            return unresolved
        for row in rows:
            profile = _Profile(*row)
            try:
                _move(conn, gateway, profile, report)
            except GatewayAuthenticationError:
                raise  # every profile would fail alike
            except GatewayRequestRejected as exc:
                conn.execute("UPDATE payment_profiles SET vault_error = %s WHERE id = %s",
                             (first_line(exc, 500), profile.id))
                report.add("vault_refused")
                report.skip(f"Stripe refused the card ({exc.code or exc.http_status})", f"payment profile {profile.id}")
            except GatewayUnavailable as exc:
                log.warning("payment profile %s: no answer from Stripe: %s", profile.id, exc)
                report.add("unresolved")
                unresolved.append(profile.id)
        looked += len(rows)
        after = rows[-1][0]
    report.add("max_profiles_reached")
    return unresolved


def _move(conn, gateway: PaymentGatewayHook, profile: _Profile, report: StepReport) -> None:
    if profile.payment_method is None:
        card = gateway.payment_method_from_token(profile.token, metadata={PROFILE_METADATA: str(profile.id)},
                                                 idempotency_key=f"vault-card:{profile.id}")
        conn.execute("UPDATE payment_profiles SET gateway_token = %s WHERE id = %s AND gateway_token IS NULL",
                     (card.payment_method_id, profile.id))
    else:
        card = gateway.payment_method(profile.payment_method)
    customer = profile.gateway_customer or _customer(conn, gateway, profile, report)
    if card.customer_id is None:
        card = gateway.attach(card.payment_method_id, customer, idempotency_key=f"vault-attach:{profile.id}")
    if card.customer_id != customer:
        raise GatewayRequestRejected(f"PaymentMethod {card.payment_method_id} is attached to another Customer"
                                     f" ({card.customer_id}), not {customer}", http_status=None,
                                     code="attached_elsewhere")
    _vaulted(conn, profile.id, card)
    report.add("profiles_vaulted")


def _customer(conn, gateway: PaymentGatewayHook, profile: _Profile, report: StepReport) -> str:
    """The panel customer's one Stripe Customer, recorded on all their profiles before it is used."""
    known = conn.execute("SELECT gateway_customer_id FROM payment_profiles WHERE customer_id = %s"
                         " AND gateway_customer_id IS NOT NULL LIMIT 1", (profile.customer_id,)).fetchone()
    customer = known[0] if known else gateway.find_customer(CUSTOMER_METADATA, str(profile.customer_id))
    if customer is None:
        try:
            customer = gateway.create_customer(
                name=profile.name, email=profile.email, metadata={CUSTOMER_METADATA: str(profile.customer_id)},
                idempotency_key=f"vault-customer:{profile.customer_id}")
            report.add("customers_created")
        except IdempotencyKeyConflict as exc:
            # the key made a Customer when the name or e-mail were different: it exists, and search
            # shows it once Stripe has indexed it
            raise GatewayUnavailable(f"customer {profile.customer_id}: created earlier with other details,"
                                     " not yet found by search") from exc
    conn.execute("UPDATE payment_profiles SET gateway_customer_id = %s WHERE customer_id = %s"
                 " AND gateway_customer_id IS NULL", (customer, profile.customer_id))
    return customer


def _vaulted(conn, profile_id: int, card: VaultedCard) -> None:
    conn.execute(
        "UPDATE payment_profiles SET legacy_card_token = NULL, vault_error = NULL,"
        " card_brand = coalesce(%s, card_brand), card_last4 = coalesce(%s, card_last4)"
        " WHERE id = %s AND gateway_token = %s",
        (card.brand, card.last4, profile_id, card.payment_method_id))
