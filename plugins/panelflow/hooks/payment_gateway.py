"""Card payments on Stripe's API (v1), through Stripe's official ``stripe`` library.

BillingWork charges saved cards with PaymentIntents created and confirmed off-session
(``confirm=true``, ``off_session=true``) against the customer's saved PaymentMethod; ProvisioningWork
27 moves legacy card references into Stripe's vault (a Customer, a PaymentMethod made from the
token and attached to it). The library is Stripe's own, so the requests are Stripe's — form-encoded
parameters, ``Idempotency-Key``, ``Stripe-Version`` — and the same hook that runs against the
loopback sandbox in tests runs against ``https://api.stripe.com`` with a test or live key.

The connection (``payment_gateway``, type ``panelflow_payment_gateway``): password = the secret
key (``sk_test_…`` / ``sk_live_…`` or a restricted ``rk_…``), host = the API base (empty: Stripe's
own, ``https://api.stripe.com``; a full URL, or host + schema + port), extras ``timeout`` (seconds
a request may take, default 30) and ``stripe_version`` (default: the version the pinned library
was generated for). The key goes only into the library's ``Authorization`` header; Airflow's
secrets masker hides it in task logs, and Stripe's own errors show it redacted.

Nothing here retries. Stripe's library would resend a timed-out POST under the same idempotency
key (safe), but then a lost answer and a recovered one look alike to the caller, which must
know: BillingWork records every request under an attempt's key, resends it itself (in the run,
then on the task's retry), and stops resending once Stripe forgets the key (24 hours). So the
client is built with ``max_network_retries=0`` and every outcome is sorted into:

- an answer — :class:`ChargeApproved` or :class:`ChargeDeclined` (402 ``card_error`` with its
  ``decline_code``, or a PaymentIntent that needs the customer): the outcome is known;
- :class:`GatewayUnavailable` (no answer, timeout, 5xx, 409 "key in flight", 429): the card may or
  may not have been charged; resend the SAME request under the SAME key later;
- :class:`GatewayRequestRejected` (400/404 ``invalid_request_error``): Stripe refused the request
  without executing it; resending it unchanged will not help. Its special cases:
  :class:`GatewayAuthenticationError` (401/403: the key) and :class:`IdempotencyKeyConflict`
  (400 ``idempotency_error``: the key was first used with other parameters).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from airflow.sdk import BaseHook

from panelflow.hooks._extras import extra_number
from panelflow.hooks._http import base_url_of

STRIPE_API_BASE = "https://api.stripe.com"


class PaymentGatewayError(Exception):
    """Any failure to get an answer from Stripe."""


class GatewayUnavailable(PaymentGatewayError):
    """No answer: whether the request was executed is unknown. Resend it with the same idempotency key."""


class GatewayRequestRejected(PaymentGatewayError):
    """Stripe refused the request (a 4xx other than a card error); it did not execute it."""

    def __init__(self, message: str, *, http_status: int | None, code: str | None = None):
        super().__init__(message)
        self.http_status = http_status
        self.code = code


class GatewayAuthenticationError(GatewayRequestRejected):
    """The key was refused: a configuration error, every request would fail the same way."""


class IdempotencyKeyConflict(GatewayRequestRejected):
    """The key was first used with other parameters: what that first request did is not known here."""


class CardRefused(GatewayRequestRejected):
    """A card error outside a charge (Stripe checks a card when it is attached): ``code`` is the decline code."""


@dataclass(frozen=True)
class ChargeApproved:
    payment_intent_id: str  # pi_…: what refunds, disputes and reconciliation start from
    charge_id: str | None  # the PaymentIntent's latest_charge (ch_…)
    amount_minor: int
    currency: str
    created: datetime  # when Stripe made the payment (UTC): the payment's time, whichever try learned it
    replayed: bool = False  # Stripe answered from its idempotency store: an earlier try had charged


@dataclass(frozen=True)
class ChargeDeclined:
    code: str  # the most specific code Stripe gave: "insufficient_funds" (decline_code) over "card_declined"
    message: str
    replayed: bool = False


ChargeResult = ChargeApproved | ChargeDeclined


@dataclass(frozen=True)
class VaultedCard:
    """A card PaymentMethod as Stripe describes it: ids and display details, never the number."""

    payment_method_id: str
    customer_id: str | None
    brand: str | None
    last4: str | None


@dataclass(frozen=True)
class GatewaySettings:
    """What the hook read from its connection, once: a hook never re-reads it mid-run."""

    api_base: str
    timeout: float
    stripe_version: str | None


class PaymentGatewayHook(BaseHook):
    """One Stripe client (and HTTP session) per hook, reused across a run's requests; ``close()`` it."""

    conn_name_attr = "payment_gateway_conn_id"
    default_conn_name = "payment_gateway"
    conn_type = "panelflow_payment_gateway"
    hook_name = "panelflow payment gateway (Stripe)"

    DEFAULT_TIMEOUT = 30.0

    def __init__(self, payment_gateway_conn_id: str = default_conn_name, **kwargs):
        super().__init__(**kwargs)
        self.payment_gateway_conn_id = payment_gateway_conn_id
        self.settings: GatewaySettings | None = None
        self._client = None
        self._session = None

    @classmethod
    def get_connection_form_widgets(cls) -> dict[str, Any]:
        """The extras as form fields (for a UI that still reads hook widgets)."""
        from flask_appbuilder.fieldwidgets import BS3TextFieldWidget
        from flask_babel import lazy_gettext
        from wtforms.fields import StringField

        return {"timeout": StringField(lazy_gettext("Request timeout (seconds)"), widget=BS3TextFieldWidget(),
                                       default=str(int(cls.DEFAULT_TIMEOUT))),
                "stripe_version": StringField(lazy_gettext("Stripe-Version (empty: the library's)"),
                                              widget=BS3TextFieldWidget())}

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return {"hidden_fields": ["login"],
                "relabeling": {"host": "API base URL", "password": "Secret key", "schema": "Scheme (http/https)"},
                "placeholders": {"host": STRIPE_API_BASE, "password": "sk_test_…", "schema": "https",
                                 "extra": '{"timeout": 30}'}}

    # -- the client -----------------------------------------------------------------------------

    def get_conn(self):
        """The hook's ``stripe.StripeClient``, from the connection read once; it never retries."""
        if self._client is None:
            import requests
            import stripe

            cid = self.payment_gateway_conn_id
            conn = self.get_connection(cid)
            if not conn.password:
                raise ValueError(f"connection {cid!r} has no password (the Stripe secret key)")
            extra = conn.extra_dejson
            self.settings = GatewaySettings(
                api_base=base_url_of(conn, cid, STRIPE_API_BASE),
                timeout=extra_number(cid, extra, "timeout", self.DEFAULT_TIMEOUT, minimum=0.1),
                stripe_version=str(extra["stripe_version"]) if extra.get("stripe_version") else None)
            stripe_log = logging.getLogger("stripe")
            if stripe_log.level == logging.NOTSET:
                # the library logs two INFO lines per request (a billing run's log twice over) and, at
                # DEBUG, whole request bodies (e-mail addresses, card tokens): warnings only, unless a
                # deployment set the "stripe" logger's level itself
                stripe_log.setLevel(logging.WARNING)
            self._session = requests.Session()
            self._client = stripe.StripeClient(
                conn.password, base_addresses={"api": self.settings.api_base},
                stripe_version=self.settings.stripe_version, max_network_retries=0,
                http_client=stripe.RequestsClient(timeout=self.settings.timeout, session=self._session))
        return self._client

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
        self._client = self._session = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def test_connection(self) -> tuple[bool, str]:
        """Whether Stripe answers and accepts the key, without changing anything (reads the balance)."""
        try:
            self._call("connection test", lambda c: c.v1.balance.retrieve())
        except GatewayAuthenticationError as exc:
            return False, f"Stripe refused the secret key (HTTP {exc.http_status})"
        except PaymentGatewayError as exc:
            return False, str(exc)
        return True, "Stripe accepted the key"

    # -- charges --------------------------------------------------------------------------------

    def charge(self, *, payment_method: str, customer: str, amount_minor: int, currency: str, idempotency_key: str,
               description: str, metadata: dict[str, str] | None = None) -> ChargeResult:
        """Charge ``amount_minor`` (the currency's minor units) to the customer's saved ``payment_method``,
        off-session: a PaymentIntent created and confirmed in one request.

        Raises :class:`GatewayUnavailable` when the outcome is unknown: the caller must resend this
        exact request (same key, same arguments) later; other parameters under the same key are
        refused by Stripe (:class:`IdempotencyKeyConflict`).
        """
        import stripe

        if not isinstance(amount_minor, int) or amount_minor <= 0:
            raise ValueError(f"amount_minor must be a positive integer, not {amount_minor!r}")
        params = {"amount": amount_minor, "currency": currency.lower(), "customer": customer,
                  "payment_method": payment_method, "confirm": True, "off_session": True,
                  "description": description, "metadata": dict(metadata or {})}
        what = f"charge {idempotency_key}"
        try:
            intent = self._call(what, lambda c: c.v1.payment_intents.create(
                params, {"idempotency_key": idempotency_key}), card_errors=False)
        except stripe.CardError as exc:  # 402: declined, or off-session authentication needed
            error = exc.error
            return ChargeDeclined(code=str(getattr(error, "decline_code", None) or exc.code or "card_declined"),
                                  message=str(getattr(error, "message", None) or exc.user_message or "declined"),
                                  replayed=_replayed(exc.headers))
        replayed = _replayed(intent.last_response.headers if intent.last_response else {})
        if intent.status == "processing":  # not final; a resend would only replay this answer, so look again
            intent = self._call(what, lambda c: c.v1.payment_intents.retrieve(intent.id))
        return _outcome(what, intent, replayed)

    # -- the vault (ProvisioningWork 27) ----------------------------------------------------------

    def find_customer(self, metadata_key: str, value: str) -> str | None:
        """The Customer whose ``metadata[metadata_key]`` is ``value`` (the oldest if several), via
        Stripe's search. Search is eventually consistent (about a minute): it finds what an
        idempotent create no longer can, after Stripe forgot that create's key."""
        found = self._call(f"customer search {metadata_key}={value}", lambda c: c.v1.customers.search(
            {"query": f"metadata['{metadata_key}']:'{_quoted(value)}'", "limit": 10}))
        customers = sorted(found.data, key=lambda customer: (customer.created, customer.id))
        return customers[0].id if customers else None

    def create_customer(self, *, name: str | None, email: str | None, metadata: dict[str, str],
                        idempotency_key: str) -> str:
        params: dict[str, Any] = {"metadata": metadata}
        if name:
            params["name"] = name
        if email:
            params["email"] = email
        customer = self._call(f"customer {idempotency_key}", lambda c: c.v1.customers.create(
            params, {"idempotency_key": idempotency_key}))
        return customer.id

    def payment_method_from_token(self, token: str, *, metadata: dict[str, str], idempotency_key: str) -> VaultedCard:
        """Stripe's way of importing a card token: ``POST /v1/payment_methods`` with ``card[token]``.
        A token is single-use: only the same key's replay returns this PaymentMethod again."""
        method = self._call(f"payment method {idempotency_key}", lambda c: c.v1.payment_methods.create(
            {"type": "card", "card": {"token": token}, "metadata": metadata}, {"idempotency_key": idempotency_key}))
        return _card(method)

    def payment_method(self, payment_method_id: str) -> VaultedCard:
        return _card(self._call(f"payment method {payment_method_id}",
                                lambda c: c.v1.payment_methods.retrieve(payment_method_id)))

    def attach(self, payment_method_id: str, customer: str, *, idempotency_key: str) -> VaultedCard:
        """Attach the PaymentMethod to the Customer (Stripe checks the card: :class:`CardRefused`)."""
        return _card(self._call(f"attach {idempotency_key}", lambda c: c.v1.payment_methods.attach(
            payment_method_id, {"customer": customer}, {"idempotency_key": idempotency_key})))

    # -- errors ---------------------------------------------------------------------------------

    def _call(self, what: str, request, *, card_errors: bool = True):
        """``request(client)``, its Stripe errors sorted into this module's three kinds."""
        import stripe

        client = self.get_conn()
        try:
            return request(client)
        except stripe.CardError as exc:
            if not card_errors:
                raise
            error = exc.error
            raise CardRefused(f"{what}: card refused: {getattr(error, 'message', None) or exc.user_message}",
                              http_status=exc.http_status,
                              code=str(getattr(error, "decline_code", None) or exc.code)) from exc
        except (stripe.AuthenticationError, stripe.PermissionError) as exc:
            raise GatewayAuthenticationError(
                f"Stripe refused the secret key of connection {self.payment_gateway_conn_id!r}"
                f" (HTTP {exc.http_status}): {exc.user_message}", http_status=exc.http_status, code=exc.code) from exc
        except stripe.IdempotencyError as exc:
            raise IdempotencyKeyConflict(f"{what}: HTTP {exc.http_status}: {exc.user_message}",
                                         http_status=exc.http_status, code="idempotency_error") from exc
        except stripe.APIConnectionError as exc:
            cause = type(exc.__cause__).__name__ if exc.__cause__ else "no answer"
            raise GatewayUnavailable(f"{what}: no answer ({cause})") from exc
        except (stripe.RateLimitError, stripe.APIError) as exc:  # 429, 409 key in flight, 5xx
            raise GatewayUnavailable(" ".join(filter(None, (f"{what}: HTTP {exc.http_status}", _code(exc),
                                                            exc.user_message)))) from exc
        except stripe.StripeError as exc:  # InvalidRequestError (400/404) and the rest: refused, not executed
            raise GatewayRequestRejected(f"{what}: HTTP {exc.http_status}: {exc.user_message}",
                                         http_status=exc.http_status, code=_code(exc)) from exc


def _code(exc) -> str | None:
    """Stripe's error code (the library leaves it off some error classes; the body has it)."""
    return exc.code or getattr(exc.error, "code", None)


def _replayed(headers) -> bool:
    return str((headers or {}).get("Idempotent-Replayed", "")).lower() == "true"


def _quoted(value: str) -> str:
    """A value inside a Stripe search query's single quotes."""
    return value.replace("\\", "\\\\").replace("'", "\\'")


def _card(method) -> VaultedCard:
    card = getattr(method, "card", None)
    customer = getattr(method, "customer", None)  # an id, or the Customer when expanded
    return VaultedCard(payment_method_id=method.id, customer_id=getattr(customer, "id", customer),
                       brand=getattr(card, "brand", None), last4=getattr(card, "last4", None))


def _outcome(what: str, intent, replayed: bool) -> ChargeResult:
    """What a PaymentIntent's state means for the invoice."""
    if intent.status == "succeeded":
        charge = getattr(intent, "latest_charge", None)  # an id, or the Charge when expanded
        return ChargeApproved(payment_intent_id=intent.id, charge_id=getattr(charge, "id", charge),
                              amount_minor=int(intent.amount), currency=str(intent.currency).upper(),
                              created=datetime.fromtimestamp(intent.created, tz=timezone.utc), replayed=replayed)
    if intent.status in ("requires_payment_method", "requires_action", "requires_confirmation", "canceled"):
        # off-session nobody can authenticate or pick another card: nothing was charged
        error = getattr(intent, "last_payment_error", None)
        code = getattr(error, "decline_code", None) or getattr(error, "code", None) or (
            "authentication_required" if intent.status == "requires_action" else intent.status)
        return ChargeDeclined(code=str(code), message=str(getattr(error, "message", None)
                                                          or f"PaymentIntent {intent.status}"), replayed=replayed)
    raise GatewayUnavailable(f"{what}: PaymentIntent {intent.id} is {intent.status!r}, not a final outcome")
