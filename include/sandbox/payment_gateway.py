"""A loopback Stripe (API v1) for tests and ``make run``: the endpoints panelflow uses, answered as Stripe documents.

Stripe cannot run here, and the cases that matter for "never charge twice" are ones the real
service produces rarely and unpredictably: an answer lost after the card was charged, a client
killed while Stripe still works on its request. This emulator produces them on demand, chosen by
the PaymentMethod charged, so the same data drives unit tests and the dev stack. Everything else
is Stripe's published contract, so ``PaymentGatewayHook`` (the official ``stripe`` library) talks
to it unchanged, and would talk to ``https://api.stripe.com`` the same way.

What it answers (form-encoded bodies with Stripe's nested ``metadata[key]=…`` / ``card[token]=…``;
``Authorization: Bearer <secret key>`` or Basic with the key as user; JSON answers with a
``Request-Id`` header)::

    POST /v1/payment_intents                 amount, currency, customer, payment_method, confirm=true,
                                             off_session=true, description, metadata[…]
    GET  /v1/payment_intents/<id>
    POST /v1/customers                       name, email, description, metadata[…]
    GET  /v1/customers/<id>
    GET  /v1/customers/search?query=metadata['<key>']:'<value>'
    GET  /v1/customers/<id>/payment_methods?type=card
    POST /v1/payment_methods                 type=card, card[token]=tok_…, metadata[…]
    GET  /v1/payment_methods/<id>
    POST /v1/payment_methods/<id>/attach     customer
    GET  /v1/balance                         (what a connection test reads)

Idempotency as Stripe's v1 API: the first answer to an ``Idempotency-Key`` whose request began
executing (a 200, or a 402 card error) is stored with the request's endpoint and parameters; a
resend of the same request replays it (``Idempotent-Replayed: true``, ``Original-Request``)
without executing again; the same key with other parameters is 400 ``idempotency_error``; a resend
while the first is still executing is 409 ``idempotency_key_in_use``. Refusals before execution
(400 parameter errors, 401, 409, 429, 503) are not stored: resending runs again.

Outcomes come from Stripe's test PaymentMethods and tokens (``pm_card_visa`` / ``tok_visa``
approve; ``pm_card_visa_chargeDeclinedInsufficientFunds`` → 402 ``card_declined`` /
``insufficient_funds`` …, see ``TEST_CARDS``). As on Stripe, the declining test cards cannot be
attached to a Customer (the attach is declined); ``pm_card_chargeCustomerFail`` attaches and its
charges fail. A magic ``pm_card_…`` id attached to a Customer becomes a new ``pm_…`` of its own.
Sandbox-only (not Stripe's) are:

- the ``sandbox_…`` cards (``pm_sandbox_answer_lost`` …, tokens ``tok_sandbox_…``): a charge on
  ``answer_lost`` is made and stored, but its first answer is held ``timeout_hold`` seconds (longer
  than the client waits); on ``hold`` the request stays in flight until ``release()`` (at most
  ``hold_max`` s), so a test can kill the client meanwhile; ``unavailable`` answers 503;
- tokens ``tok_<test token>_<anything>`` (``tok_visa_17``): a single-use token for that test card,
  standing for a card reference another integration stored years ago;
- ``throttle(n)``: the next ``n`` API requests get 429 ``rate_limit``;
- ``GET /_sandbox/charges`` (every succeeded PaymentIntent, with its idempotency key),
  ``GET /_sandbox/health``, ``POST /_sandbox/release``: no authentication.

Run it: ``python -m sandbox.payment_gateway --host 127.0.0.1 --port 8765 [--api-key KEY]
[--timeout-hold 30] [--hold-max 300] [--state FILE]``; the key defaults to
``$PANELFLOW_SANDBOX_GATEWAY_KEY`` or ``sk_test_sandbox`` (a sandbox key, not a secret). Stripe
keeps what it was given; with ``--state`` the sandbox does too (Customers, PaymentMethods,
PaymentIntents, spent tokens, stored answers, in one JSON file rewritten after each change), so a
restarted ``make run`` still knows the cards it vaulted.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit


_ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


def _object_id(prefix: str, length: int) -> str:
    """Stripe's ids are base62 (``pm_1Mq…``); hex ids would now and then hold twelve digits in a
    row and look like a card number to the checks that no card number is stored."""
    return f"{prefix}_1" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(length - 1))

DEFAULT_API_KEY = "sk_test_sandbox"
MAX_BODY = 64 * 1024

log = logging.getLogger("panelflow.sandbox.payment_gateway")


@dataclass(frozen=True)
class Card:
    """One of Stripe's documented test cards (or a sandbox-only one): what it looks like and does."""

    number: str  # only ever used for the card's fingerprint; never sent or stored by panelflow
    brand: str
    decline: tuple[str, str | None, str] | None = None  # (code, decline_code, message) on every charge
    attachable: bool = True  # Stripe: the declining test cards cannot be attached to a Customer
    sandbox: str | None = None  # answer_lost | hold | unavailable (sandbox-only behaviours)

    @property
    def last4(self) -> str:
        return self.number[-4:]


_DECLINED = "Your card was declined."
TEST_CARDS: dict[str, Card] = {
    "visa": Card("4242424242424242", "visa"),
    "visa_debit": Card("4000056655665556", "visa"),
    "mastercard": Card("5555555555554444", "mastercard"),
    "amex": Card("371449635398431", "amex"),
    "chargeCustomerFail": Card("4000000000000341", "visa", ("card_declined", "generic_decline", _DECLINED)),
    "visa_chargeDeclined": Card("4000000000000002", "visa", ("card_declined", "generic_decline", _DECLINED),
                                    attachable=False),
    "visa_chargeDeclinedInsufficientFunds": Card(
        "4000000000009995", "visa", ("card_declined", "insufficient_funds", "Your card has insufficient funds."),
        attachable=False),
    "visa_chargeDeclinedLostCard": Card("4000000000009987", "visa", ("card_declined", "lost_card", _DECLINED),
                                            attachable=False),
    "visa_chargeDeclinedStolenCard": Card("4000000000009979", "visa",
                                              ("card_declined", "stolen_card", _DECLINED), attachable=False),
    "chargeDeclinedExpiredCard": Card("4000000000000069", "visa",
                                          ("expired_card", None, "Your card has expired."), attachable=False),
    "chargeDeclinedProcessingError": Card(
        "4000000000000119", "visa",
        ("processing_error", None, "An error occurred while processing your card. Try again in a little bit."),
        attachable=False),
    "authenticationRequired": Card(
        "4000002760003184", "visa",
        ("authentication_required", "authentication_required",
         "Your card was declined. This transaction requires authentication.")),
    "sandbox_answer_lost": Card("4000000000001001", "visa", sandbox="answer_lost"),
    "sandbox_hold": Card("4000000000001002", "visa", sandbox="hold"),
    "sandbox_unavailable": Card("4000000000001003", "visa", sandbox="unavailable"),
}
# the older spellings Stripe's docs used for the same cards
TEST_CARDS["chargeDeclined"] = TEST_CARDS["visa_chargeDeclined"]
TEST_CARDS["chargeDeclinedInsufficientFunds"] = TEST_CARDS["visa_chargeDeclinedInsufficientFunds"]


class ApiError(Exception):
    """A Stripe error answer: HTTP status and the ``error`` object."""

    def __init__(self, status: int, kind: str, message: str, *, code: str | None = None, param: str | None = None,
                 **more: Any):
        super().__init__(message)
        self.status = status
        self.body = {"error": {"type": kind, "message": message, **({"code": code} if code else {}),
                               **({"param": param} if param else {}), **more}}


def _missing(what: str, ident: str, param: str | None = None) -> ApiError:
    return ApiError(400 if param else 404, "invalid_request_error", f"No such {what}: '{ident}'",
                    code="resource_missing", param=param)


def decode_form(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Stripe's form encoding: ``metadata[k]=v`` → ``{"metadata": {"k": "v"}}``, ``expand[]=x`` → a list."""
    decoded: dict[str, Any] = {}
    for name, value in pairs:
        match = re.fullmatch(r"([^\[\]]+)((?:\[[^\[\]]*\])*)", name)
        if not match:
            raise ApiError(400, "invalid_request_error", f"Invalid parameter name: {name}")
        keys = [match[1]] + re.findall(r"\[([^\[\]]*)\]", match[2])
        as_list = keys[-1] == ""
        if as_list:
            keys.pop()
        node = decoded
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ApiError(400, "invalid_request_error", f"Invalid hash: {name}")
        if as_list:
            node.setdefault(keys[-1], []).append(value)
        else:
            node[keys[-1]] = value
    return decoded


class _Stored:
    """The first answer to an idempotency key, with what it was for (endpoint and parameters)."""

    def __init__(self, fingerprint: str, request_id: str):
        self.fingerprint = fingerprint
        self.request_id = request_id
        self.status: int | None = None  # None while the first request is still executing
        self.body: dict[str, Any] | None = None


@dataclass
class _Hold:
    go: threading.Event
    done: threading.Event


class PaymentGatewaySandbox:
    """The emulator: ``start()`` → listening at ``url``; ``stop()`` ends it and frees held requests."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, api_key: str = DEFAULT_API_KEY,
                 timeout_hold: float = 5.0, hold_max: float = 60.0, state: str | None = None):
        self.host, self.port, self.api_key = host, port, api_key
        self.timeout_hold, self.hold_max = timeout_hold, hold_max
        self.state = state
        self._lock = threading.Lock()
        self._held_changed = threading.Condition(self._lock)
        self._customers: dict[str, dict[str, Any]] = {}
        self._methods: dict[str, dict[str, Any]] = {}
        self._method_cards: dict[str, Card] = {}
        self._intents: dict[str, dict[str, Any]] = {}
        self._charges: list[dict[str, Any]] = []
        self._used_tokens: set[str] = set()
        self._by_key: dict[str, _Stored] = {}
        self._holds: list[_Hold] = []
        self._held_total = 0
        self._throttled = 0
        self._requests: list[dict[str, Any]] = []
        self._stopping = False
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> "PaymentGatewaySandbox":
        if self.state and os.path.exists(self.state):
            self._load()
        handler = type("Handler", (_Handler,), {"gateway": self})
        self._server = ThreadingHTTPServer((self.host, self.port), handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._stopping = False
        self._thread = threading.Thread(target=self._server.serve_forever, name="payment-gateway-sandbox",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
        self.release(wait=0)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self) -> "PaymentGatewaySandbox":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # -- the state file -------------------------------------------------------------------------

    _STATE = ("_customers", "_methods", "_intents", "_charges")

    def _load(self) -> None:
        with open(self.state, encoding="utf-8") as file:
            saved = json.load(file)
        for name in self._STATE:
            setattr(self, name, saved[name])
        self._method_cards = {pm: TEST_CARDS[card] for pm, card in saved["method_cards"].items()}
        self._used_tokens = set(saved["used_tokens"])
        for key, (fingerprint, request_id, status, body) in saved["answers"].items():
            stored = self._by_key[key] = _Stored(fingerprint, request_id)
            stored.status, stored.body = status, body

    def save(self) -> None:
        """Write the state file (if any) after a change: a temporary file renamed over the old one."""
        if not self.state:
            return
        names = {id(card): name for name, card in TEST_CARDS.items()}
        with self._lock:
            saved = {name: getattr(self, name) for name in self._STATE}
            saved["method_cards"] = {pm: names[id(card)] for pm, card in self._method_cards.items()}
            saved["used_tokens"] = sorted(self._used_tokens)
            saved["answers"] = {key: [s.fingerprint, s.request_id, s.status, s.body]
                                for key, s in self._by_key.items() if s.status is not None}
            data = json.dumps(saved)
        temporary = f"{self.state}.tmp"
        with open(temporary, "w", encoding="utf-8") as file:
            file.write(data)
        os.replace(temporary, self.state)

    # -- inspection and control (tests) ---------------------------------------------------------

    @property
    def charges(self) -> list[dict[str, Any]]:
        """Every succeeded PaymentIntent (a copy), oldest first, each with its ``idempotency_key``."""
        with self._lock:
            return [dict(c) for c in self._charges]

    @property
    def requests(self) -> list[dict[str, Any]]:
        """Every API request: method, path, idempotency key, payment_method, HTTP status, replayed."""
        with self._lock:
            return [dict(r) for r in self._requests]

    @property
    def customers(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(c) for c in self._customers.values()]

    @property
    def payment_methods(self) -> list[dict[str, Any]]:
        """Every PaymentMethod created (magic test ids are not listed until attached as a copy)."""
        with self._lock:
            return [dict(m) for m in self._methods.values()]

    def charges_for(self, invoice_number: str) -> list[dict[str, Any]]:
        return [c for c in self.charges if c["metadata"].get("invoice_number") == invoice_number]

    def saved_card(self, test_method: str = "pm_card_visa", *, customer: str | None = None, name: str = "",
                   email: str = "") -> tuple[str, str]:
        """``test_method`` attached to ``customer`` (else to a new Customer), as a panel front end
        would have saved the card (Stripe's create-Customer and attach): ``(Customer id, PaymentMethod id)``."""
        customer = customer or self.create_customer({"name": name, "email": email})["id"]
        return customer, self.attach(test_method, {"customer": customer})["id"]

    def throttle(self, count: int) -> None:
        """The next ``count`` API requests are answered 429 ``rate_limit``."""
        with self._lock:
            self._throttled = count

    def release(self, wait: float = 5.0) -> None:
        """Let every held request go on (its client may have gone: that is the point), and wait
        up to ``wait`` seconds until they have executed."""
        with self._lock:
            holds, self._holds = self._holds, []
        for hold in holds:
            hold.go.set()
        deadline = time.monotonic() + wait
        for hold in holds:
            hold.done.wait(max(0.0, deadline - time.monotonic()))

    def wait_held(self, count: int = 1, timeout: float = 10.0) -> bool:
        """True once ``count`` requests have been held since start (a client is waiting on them)."""
        deadline = time.monotonic() + timeout
        with self._held_changed:
            while self._held_total < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._held_changed.wait(left)
            return True

    # -- authentication, throttling, idempotency --------------------------------------------------

    def authorised(self, header: str | None) -> str | None:
        """None when the key is right, else Stripe's 401 message (the key shown redacted, as Stripe does)."""
        scheme, _, value = (header or "").partition(" ")
        presented = value.strip()
        if scheme.lower() == "basic":
            try:
                presented = base64.b64decode(presented).decode().partition(":")[0]
            except (ValueError, UnicodeDecodeError):
                presented = ""
        elif scheme.lower() != "bearer":
            presented = ""
        if not presented:
            return ("You did not provide an API key. You need to provide your API key in the Authorization header,"
                    " using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY').")
        if hmac.compare_digest(presented.encode(), self.api_key.encode()):
            return None
        shown = presented[:8] + "*" * max(len(presented) - 12, 0) + presented[-4:] if len(presented) > 12 else "****"
        return f"Invalid API Key provided: {shown}"

    def throttled(self) -> bool:
        with self._lock:
            if self._throttled > 0:
                self._throttled -= 1
                return True
            return False

    def idempotent(self, key: str | None, method_path: str, params: dict[str, Any], run) -> tuple[int, dict, dict]:
        """(status, body, extra headers) of a POST, executed once per key: Stripe's idempotency layer."""
        request_id = _object_id("req", 14)
        if not key:
            status, body = self._run(run)
            return status, body, {"Request-Id": request_id}
        fingerprint = hashlib.sha256(json.dumps([method_path, params], sort_keys=True).encode()).hexdigest()
        with self._lock:
            stored = self._by_key.get(key)
            first = stored is None
            if first:
                stored = self._by_key[key] = _Stored(fingerprint, request_id)
        if not first:
            if stored.fingerprint != fingerprint:
                raise ApiError(400, "idempotency_error",
                               "Keys for idempotent requests can only be used with the same parameters they were"
                               f" first used with. Try using a key other than '{key}' if you meant to execute a"
                               " different request.")
            if stored.status is None:
                raise ApiError(409, "invalid_request_error",
                               "There is currently another in-progress request using this Stripe API"
                               " Idempotency-Key. Please try again later.", code="idempotency_key_in_use")
            return stored.status, stored.body, {"Request-Id": request_id, "Idempotency-Key": key,
                                                "Idempotent-Replayed": "true", "Original-Request": stored.request_id}
        try:
            status, body = self._run(run)
        except BaseException:
            with self._lock:
                del self._by_key[key]  # refused before executing, or 503: nothing stored, a resend runs again
            raise
        with self._lock:
            stored.status, stored.body = status, body
        return status, body, {"Request-Id": request_id, "Idempotency-Key": key}

    @staticmethod
    def _run(run) -> tuple[int, dict[str, Any]]:
        try:
            return 200, run()
        except _CardDeclined as declined:  # a card error began executing: stored and replayed
            return 402, declined.body

    def record(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self._requests.append(entry)

    # -- customers --------------------------------------------------------------------------------

    def create_customer(self, params: dict[str, Any]) -> dict[str, Any]:
        customer = {"id": _object_id("cus", 14), "object": "customer", "created": int(time.time()),
                    "name": params.get("name") or None, "email": params.get("email") or None,
                    "description": params.get("description"), "metadata": _metadata(params),
                    "invoice_settings": {"default_payment_method": None}, "livemode": False}
        with self._lock:
            self._customers[customer["id"]] = customer
        return dict(customer)

    def customer(self, customer_id: str, param: str | None = None) -> dict[str, Any]:
        with self._lock:
            found = self._customers.get(customer_id)
        if found is None:
            raise _missing("customer", customer_id, param)
        return dict(found)

    def search_customers(self, query: str) -> dict[str, Any]:
        """The one search form panelflow uses: ``metadata['key']:'value'`` (exact match)."""
        match = re.fullmatch(r"\s*metadata\['([^']+)'\]\s*:\s*'((?:[^'\\]|\\.)*)'\s*", query or "")
        if not match:
            raise ApiError(400, "invalid_request_error", f"Invalid search query: {query!r}", param="query")
        value = re.sub(r"\\(.)", r"\1", match[2])  # a quote or backslash escaped with a backslash
        with self._lock:
            found = [dict(c) for c in self._customers.values() if c["metadata"].get(match[1]) == value]
        return {"object": "search_result", "url": "/v1/customers/search", "has_more": False, "next_page": None,
                "data": found}

    # -- payment methods --------------------------------------------------------------------------

    def _new_method(self, card: Card, metadata: dict[str, str], customer: str | None = None) -> dict[str, Any]:
        method = {"id": _object_id("pm", 24), "object": "payment_method", "type": "card",
                  "created": int(time.time()), "customer": customer, "metadata": metadata, "livemode": False,
                  "billing_details": {"name": None, "email": None},
                  "card": {"brand": card.brand, "last4": card.last4, "exp_month": 12, "exp_year": 2034,
                           "funding": "credit", "country": "US",
                           "fingerprint": hashlib.sha256(card.number.encode()).hexdigest()[:16]}}
        with self._lock:
            self._methods[method["id"]] = method
            self._method_cards[method["id"]] = card
        return dict(method)

    def method(self, method_id: str, param: str | None = None) -> tuple[dict[str, Any], Card]:
        """A PaymentMethod and its card; a magic ``pm_card_…`` test id stands for a fresh one."""
        with self._lock:
            found = self._methods.get(method_id)
            if found is not None:
                return dict(found), self._method_cards[method_id]
        card = TEST_CARDS.get(method_id.removeprefix("pm_card_")) if method_id.startswith("pm_card_") else None
        card = card or (TEST_CARDS.get(method_id.removeprefix("pm_")) if method_id.startswith("pm_sandbox_") else None)
        if card is None:
            raise _missing("PaymentMethod", method_id, param)
        return {"id": method_id, "object": "payment_method", "type": "card", "customer": None, "metadata": {},
                "card": {"brand": card.brand, "last4": card.last4}}, card

    def create_payment_method(self, params: dict[str, Any]) -> dict[str, Any]:
        if params.get("type") != "card":
            raise ApiError(400, "invalid_request_error", "Only type=card is supported here.", param="type",
                           code="parameter_invalid_string")
        card_params = params.get("card") if isinstance(params.get("card"), dict) else {}
        if "number" in card_params:  # Stripe refuses raw numbers by default; panelflow never sends one
            raise ApiError(400, "invalid_request_error", "Sending credit card numbers directly to the Stripe API is"
                           " generally unsafe.", code="card_number_unsafe", param="card[number]")
        token = card_params.get("token")
        if not token:
            raise ApiError(400, "invalid_request_error", "Missing required param: card[token].",
                           code="parameter_missing", param="card[token]")
        card = self._token_card(token)
        return self._new_method(card, _metadata(params))

    def _token_card(self, token: str) -> Card:
        """A test token's card; a sandbox-only ``tok_<test>_<suffix>`` is single-use, like real tokens."""
        name = token.removeprefix("tok_")
        if token.startswith("tok_") and name in TEST_CARDS:
            return TEST_CARDS[name]  # Stripe's test tokens may be used again and again
        base = max((n for n in TEST_CARDS if name.startswith(n + "_")), key=len, default=None)
        if not token.startswith("tok_") or base is None:
            raise _missing("token", token, "card[token]")
        with self._lock:
            if token in self._used_tokens:
                raise ApiError(400, "invalid_request_error", f"You cannot use a Stripe token more than once: {token}.",
                               code="token_already_used", param="card[token]")
            self._used_tokens.add(token)
        return TEST_CARDS[base]

    def attach(self, method_id: str, params: dict[str, Any]) -> dict[str, Any]:
        customer_id = params.get("customer")
        if not customer_id:
            raise ApiError(400, "invalid_request_error", "Missing required param: customer.", code="parameter_missing",
                           param="customer")
        self.customer(customer_id, "customer")
        method, card = self.method(method_id)
        if not card.attachable:  # Stripe checks the card when it is attached; these test cards fail it
            code, decline_code, message = card.decline
            raise _CardDeclined(code, decline_code, message, payment_method=method)
        with self._lock:
            stored = self._methods.get(method_id)
            if stored is not None:
                if stored["customer"] not in (None, customer_id):
                    raise ApiError(400, "invalid_request_error", "The payment method you provided has already been"
                                   " attached to a customer.", code="payment_method_unexpected_state")
                stored["customer"] = customer_id
                return dict(stored)
        return self._new_method(card, _metadata(params), customer_id)  # a magic test id: a copy of its own

    def customer_methods(self, customer_id: str) -> dict[str, Any]:
        self.customer(customer_id)
        with self._lock:
            found = [dict(m) for m in self._methods.values() if m["customer"] == customer_id]
        return {"object": "list", "url": f"/v1/customers/{customer_id}/payment_methods", "has_more": False,
                "data": found}

    # -- payment intents --------------------------------------------------------------------------

    def create_intent(self, params: dict[str, Any], key: str | None) -> dict[str, Any]:
        """The PaymentIntent, confirmed at once; a succeeded one is a charge (listed with ``key``)."""
        amount = params.get("amount")
        if amount is None or not str(amount).isdigit() or int(amount) < 1:
            raise ApiError(400, "invalid_request_error", "Invalid positive integer", param="amount",
                           code="parameter_invalid_integer" if amount is not None else "parameter_missing")
        currency = str(params.get("currency") or "")
        if not re.fullmatch(r"[A-Za-z]{3}", currency):
            raise ApiError(400, "invalid_request_error", f"Invalid currency: {currency}.", param="currency",
                           code="parameter_missing" if not currency else "parameter_invalid_string")
        if params.get("confirm") != "true" or not params.get("payment_method"):
            raise ApiError(400, "invalid_request_error", "This sandbox creates PaymentIntents confirmed at once"
                           " (confirm=true with a payment_method).", code="parameter_missing", param="payment_method")
        customer_id = params.get("customer")
        if customer_id:
            self.customer(customer_id, "customer")
        method, card = self.method(params["payment_method"], "payment_method")
        if method["customer"] and method["customer"] != customer_id:
            raise ApiError(400, "invalid_request_error", "The provided PaymentMethod is attached to another"
                           " Customer; pass that Customer as `customer`.", param="payment_method")
        if card.sandbox == "unavailable":
            raise ApiError(503, "api_error", "The Stripe API is temporarily unavailable (sandbox).")
        hold = self.hold(self.hold_max) if card.sandbox == "hold" else None  # in flight: a resend gets 409
        try:
            return self._confirm(params, key, customer_id, method, card)
        finally:
            if hold is not None:
                hold.done.set()

    def _confirm(self, params, key, customer_id, method, card) -> dict[str, Any]:
        amount = params["amount"]
        intent = {"id": _object_id("pi", 24), "object": "payment_intent", "amount": int(amount),
                  "currency": params["currency"].lower(), "customer": customer_id, "payment_method": method["id"],
                  "description": params.get("description"), "metadata": _metadata(params),
                  "created": int(time.time()), "livemode": False, "capture_method": "automatic",
                  "confirmation_method": "automatic", "payment_method_types": ["card"],
                  "latest_charge": _object_id("ch", 24)}
        intent["client_secret"] = f"{intent['id']}_secret_{_object_id('', 16)[1:]}"
        if card.decline is not None:
            code, decline_code, message = card.decline
            error = {"type": "card_error", "code": code, "message": message, "charge": intent["latest_charge"],
                     **({"decline_code": decline_code} if decline_code else {}), "payment_method": method}
            intent.update(status="requires_payment_method", amount_received=0, last_payment_error=error)
            with self._lock:
                self._intents[intent["id"]] = intent
            raise _CardDeclined(code, decline_code, message, payment_method=method, charge=intent["latest_charge"],
                                payment_intent=dict(intent))
        intent.update(status="succeeded", amount_received=int(amount), last_payment_error=None)
        with self._lock:
            self._intents[intent["id"]] = intent
            self._charges.append({**intent, "idempotency_key": key})
        return intent

    def answer_delay(self, intent: dict[str, Any]) -> float:
        """Seconds the first answer to this PaymentIntent is held: a charge whose answer gets lost."""
        return self.timeout_hold if self.method(intent["payment_method"])[1].sandbox == "answer_lost" else 0.0

    def intent(self, intent_id: str) -> dict[str, Any]:
        with self._lock:
            found = self._intents.get(intent_id)
        if found is None:
            raise _missing("payment_intent", intent_id)
        return dict(found)

    def hold(self, seconds: float) -> _Hold:
        """Block this request's thread until released, stopped, or ``seconds`` have passed; the
        caller sets ``done`` once the request has done what it does after the hold."""
        hold = _Hold(threading.Event(), threading.Event())
        with self._held_changed:
            if self._stopping:
                return hold
            self._holds.append(hold)
            self._held_total += 1
            self._held_changed.notify_all()
        hold.go.wait(seconds)
        return hold


class _CardDeclined(Exception):
    """A card error (402): the request executed, so it is stored and replayed like a success."""

    def __init__(self, code: str, decline_code: str | None, message: str, **more: Any):
        super().__init__(message)
        self.body = {"error": {"type": "card_error", "code": code, "message": message,
                               **({"decline_code": decline_code} if decline_code else {}),
                               "doc_url": f"https://stripe.com/docs/error-codes/{code.replace('_', '-')}", **more}}


def _metadata(params: dict[str, Any]) -> dict[str, str]:
    metadata = params.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise ApiError(400, "invalid_request_error", "Invalid hash", param="metadata", code="parameter_invalid_hash")
    return {str(k): str(v) for k, v in metadata.items() if v != ""}  # Stripe: an empty value unsets the key


class _Handler(BaseHTTPRequestHandler):
    gateway: PaymentGatewaySandbox
    protocol_version = "HTTP/1.1"
    server_version = "panelflow-stripe-sandbox/2"

    def setup(self) -> None:
        super().setup()
        # headers and body are two writes: without this, Nagle and delayed ACKs hold each answer ~40 ms
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        log.info("%s %s", self.address_string(), format % args)  # the request line: no headers, no key

    def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if self.headers.get("Stripe-Version"):
                self.send_header("Stripe-Version", self.headers["Stripe-Version"])
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up waiting or was killed
            self.close_connection = True

    def _params(self) -> dict[str, Any]:
        url = urlsplit(self.path)
        pairs = parse_qsl(url.query, keep_blank_values=True)
        if self.command == "POST":
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                raise ApiError(413, "invalid_request_error", "The request body is too large.")
            raw = self.rfile.read(length).decode() if length else ""
            if raw and "json" in (self.headers.get("Content-Type") or ""):
                raise ApiError(400, "invalid_request_error", "Invalid request: the v1 API takes form-encoded"
                               " bodies (application/x-www-form-urlencoded), not JSON.")
            pairs += parse_qsl(raw, keep_blank_values=True)
        return decode_form(pairs)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._serve()

    def do_POST(self) -> None:  # noqa: N802
        self._serve()

    def _serve(self) -> None:
        g = self.gateway
        path = urlsplit(self.path).path
        if path.startswith("/_sandbox/"):
            return self._sandbox(path)
        key = self.headers.get("Idempotency-Key")
        entry = {"method": self.command, "path": path, "idempotency_key": key, "payment_method": None,
                 "status": None, "replayed": False}
        delay = 0.0
        try:
            params = self._params()
            entry["payment_method"] = params.get("payment_method")
            problem = g.authorised(self.headers.get("Authorization"))
            if problem:
                raise ApiError(401, "invalid_request_error", problem)
            if g.throttled():
                raise ApiError(429, "invalid_request_error", "Request rate limit exceeded. Learn more about rate"
                               " limits here https://stripe.com/docs/rate-limits.", code="rate_limit")
            if self.command == "POST":
                status, body, headers = g.idempotent(key, f"POST {path}", params,
                                                     lambda: self._post(path, params, key))
                g.save()
                if status == 200 and body.get("object") == "payment_intent" and "Idempotent-Replayed" not in headers:
                    delay = g.answer_delay(body)
            else:
                status, body, headers = 200, self._get(path, params), {"Request-Id": _object_id("req", 14)}
        except ApiError as exc:
            status, body, headers = exc.status, exc.body, {"Request-Id": _object_id("req", 14)}
        entry.update(status=status, replayed=headers.get("Idempotent-Replayed") == "true")
        g.record(entry)
        if delay:
            g.hold(delay).done.set()  # executed and stored already: only the answer waits
        self._send(status, body, headers)

    def _post(self, path: str, params: dict[str, Any], key: str | None) -> dict[str, Any]:
        g = self.gateway
        if path == "/v1/payment_intents":
            return g.create_intent(params, key)
        if path == "/v1/customers":
            return g.create_customer(params)
        if path == "/v1/payment_methods":
            return g.create_payment_method(params)
        match = re.fullmatch(r"/v1/payment_methods/([A-Za-z0-9_]+)/attach", path)
        if match:
            return g.attach(match[1], params)
        raise ApiError(404, "invalid_request_error", f"Unrecognized request URL (POST: {path}).")

    def _get(self, path: str, params: dict[str, Any]) -> dict[str, Any]:
        g = self.gateway
        if path == "/v1/balance":
            return {"object": "balance", "livemode": False, "available": [{"amount": 0, "currency": "gbp"}],
                    "pending": [{"amount": 0, "currency": "gbp"}]}
        if path == "/v1/customers/search":
            return g.search_customers(params.get("query", ""))
        routes = [(r"/v1/customers/([A-Za-z0-9_]+)/payment_methods", g.customer_methods),
                  (r"/v1/customers/([A-Za-z0-9_]+)", g.customer),
                  (r"/v1/payment_methods/([A-Za-z0-9_]+)", lambda i: g.method(i)[0]),
                  (r"/v1/payment_intents/([A-Za-z0-9_]+)", g.intent)]
        for pattern, read in routes:
            match = re.fullmatch(pattern, path)
            if match:
                return read(match[1])
        raise ApiError(404, "invalid_request_error", f"Unrecognized request URL (GET: {path}).")

    def _sandbox(self, path: str) -> None:
        g = self.gateway
        if self.command == "GET" and path == "/_sandbox/charges":
            return self._send(200, {"object": "list", "data": g.charges})
        if self.command == "GET" and path == "/_sandbox/health":
            return self._send(200, {"status": "ok"})
        if self.command == "POST" and path == "/_sandbox/release":
            g.release()
            return self._send(200, {"released": True})
        self._send(404, {"error": {"type": "invalid_request_error", "message": "Unknown sandbox endpoint."}})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Loopback Stripe API (panelflow sandbox).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--api-key", default=os.environ.get("PANELFLOW_SANDBOX_GATEWAY_KEY", DEFAULT_API_KEY),
                        help="the secret key clients must send"
                             " (default $PANELFLOW_SANDBOX_GATEWAY_KEY or the sandbox key)")
    parser.add_argument("--timeout-hold", type=float, default=30.0,
                        help="seconds the first answer for a 'sandbox_answer_lost' card is held")
    parser.add_argument("--hold-max", type=float, default=300.0,
                        help="seconds a 'sandbox_hold' request stays in flight at most")
    parser.add_argument("--state", help="a JSON file keeping what the sandbox was given across restarts")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s payment-gateway %(message)s", stream=sys.stderr)
    gateway = PaymentGatewaySandbox(args.host, args.port, args.api_key, args.timeout_hold, args.hold_max,
                                    args.state).start()
    log.info("listening on %s", gateway.url)
    stopped = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopped.set())
    while not stopped.wait(1):
        pass
    gateway.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
