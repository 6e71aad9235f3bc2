"""A loopback card-payment gateway (Stripe-like JSON API) for tests and ``make run``.

The real gateway cannot run here, and the cases that matter for "never charge twice" are the
ones a real gateway produces rarely and unpredictably: an answer lost after the card was
charged, a client killed while waiting. This emulator produces them on demand, chosen by the
payment profile's gateway token, so the same data drives unit tests and the dev stack.

API (what panelflow's ``PaymentGatewayHook`` speaks)::

    POST /v1/charges                      Authorization: Bearer <api key>, Idempotency-Key: <key>
         {"amount": 1234, "currency": "GBP", "source": "tok_…", "description": …, "metadata": {…}}
      201 {"id": "ch_…", "object": "charge", "status": "succeeded", "amount", "currency", "created", …}
      402 {"error": {"type": "card_error", "code": "card_declined", "decline_code": "insufficient_funds", …}}
      400 invalid body · 401 wrong or missing key · 422 key reused with another body
      409 the same key is being processed right now · 503 ``unavailable`` tokens (nothing charged)
    GET  /v1/charges/<id>                 the charge (authorised like POST)

Idempotency is the real gateways' contract: the first response to a key is stored with a
fingerprint of the body; the same key and body replay it (header ``Idempotent-Replayed:
true``) without charging again; the same key with another body is an error. Declines are
stored and replayed too. Server errors (503) are not stored: resending executes again.

Behaviour by token (``source``), checked in this order:

- contains ``unavailable`` — 503, nothing charged (the gateway is down);
- contains ``decline`` — 402 ``card_declined``; the decline code is what follows
  ``decline_`` (``tok_decline_expired_card`` → ``expired_card``), else ``insufficient_funds``;
- contains ``timeout`` — the charge is made and its response stored, but the first request for
  a key gets its answer only after ``timeout_hold`` seconds (longer than the client waits):
  charged, answer lost. A resend with the same key is answered at once from the stored response;
- contains ``hold`` — the same, but the first answer is held until ``release()`` (or
  ``POST /_sandbox/release``), at most ``hold_max`` seconds: a test can kill the client while
  the gateway holds its request (``wait_held()`` says when);
- anything else (``tok_visa``, ``tok_…``) — approved.

Sandbox-only endpoints, without authentication: ``GET /_sandbox/charges`` (every charge made,
with its idempotency key), ``GET /_sandbox/health``, ``POST /_sandbox/release``. In-process,
``PaymentGatewaySandbox.charges`` is the same list.

Run it: ``python -m sandbox.payment_gateway --host 127.0.0.1 --port 8765
[--api-key KEY] [--timeout-hold 30] [--hold-max 300]``; the key defaults to
``$PANELFLOW_SANDBOX_GATEWAY_KEY`` or ``sk_test_sandbox`` (a sandbox key, not a secret).
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

DEFAULT_API_KEY = "sk_test_sandbox"
MAX_BODY = 64 * 1024

log = logging.getLogger("panelflow.sandbox.payment_gateway")


class _StoredResponse:
    """What the first request for an idempotency key got, replayed to every resend of it."""

    def __init__(self, fingerprint: str):
        self.fingerprint = fingerprint
        self.status: int | None = None  # None while the first request is still being processed
        self.body: dict[str, Any] | None = None


class PaymentGatewaySandbox:
    """The emulator: ``start()`` → listening at ``url``; ``stop()`` ends it and frees held answers."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, api_key: str = DEFAULT_API_KEY,
                 timeout_hold: float = 5.0, hold_max: float = 60.0):
        self.host = host
        self.port = port
        self.api_key = api_key
        self.timeout_hold = timeout_hold
        self.hold_max = hold_max
        self._lock = threading.Lock()
        self._held_changed = threading.Condition(self._lock)
        self._charges: list[dict[str, Any]] = []
        self._by_key: dict[str, _StoredResponse] = {}
        self._holds: list[threading.Event] = []
        self._held_total = 0
        self._requests: list[dict[str, Any]] = []
        self._stopping = False
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> "PaymentGatewaySandbox":
        gateway = self

        class Handler(_Handler):
            pass

        Handler.gateway = gateway
        self._server = ThreadingHTTPServer((self.host, self.port), Handler)
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
        self.release()
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

    # -- inspection and control (tests) ---------------------------------------------------------

    @property
    def charges(self) -> list[dict[str, Any]]:
        """Every charge actually made (a copy), oldest first, each with its ``idempotency_key``."""
        with self._lock:
            return [dict(c) for c in self._charges]

    @property
    def requests(self) -> list[dict[str, Any]]:
        """Every ``POST /v1/charges`` received: idempotency key, source, HTTP status, replayed."""
        with self._lock:
            return [dict(r) for r in self._requests]

    def charges_for(self, invoice_number: str) -> list[dict[str, Any]]:
        return [c for c in self.charges if c["metadata"].get("invoice_number") == invoice_number]

    def release(self) -> None:
        """Let every held answer go (the clients may have gone: that is the point)."""
        with self._lock:
            holds, self._holds = self._holds, []
        for event in holds:
            event.set()

    def wait_held(self, count: int = 1, timeout: float = 10.0) -> bool:
        """True once ``count`` answers have been held since start (a client is waiting on them)."""
        deadline = time.monotonic() + timeout
        with self._held_changed:
            while self._held_total < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._held_changed.wait(left)
            return True

    # -- the API --------------------------------------------------------------------------------

    def authorised(self, header: str | None) -> bool:
        scheme, _, presented = (header or "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(presented.strip().encode(), self.api_key.encode())

    def create_charge(self, key: str | None, body: dict[str, Any]) -> tuple[int, dict[str, Any], bool, float]:
        """(HTTP status, JSON body, replayed, seconds to hold the answer) for one charge request."""
        problem = _invalid(body)
        if problem:
            return 400, _error("invalid_request_error", "parameter_invalid", problem), False, 0.0
        source = body["source"]
        if key is None:  # allowed, as on real gateways, but then nothing protects against a resend
            status, payload = self._execute(None, body)
            return status, payload, False, self._hold_for(source)
        fingerprint = hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
        with self._lock:
            stored = self._by_key.get(key)
            if stored is None:
                stored = self._by_key[key] = _StoredResponse(fingerprint)
                first = True
            else:
                first = False
        if not first:
            if stored.fingerprint != fingerprint:
                return 422, _error("idempotency_error", "idempotency_key_reused",
                                   "Keys for idempotent requests can only be used with the same parameters they"
                                   " were first used with."), False, 0.0
            if stored.status is None:
                return 409, _error("idempotency_error", "idempotency_key_in_use",
                                   "There is currently another in-progress request using this Idempotent Key."
                                   " Retry after the first one has completed."), False, 0.0
            return stored.status, stored.body, True, 0.0
        status, payload = self._execute(key, body)
        with self._lock:
            if status >= 500:  # not executed: a resend runs again, as on real gateways
                del self._by_key[key]
            else:
                stored.status, stored.body = status, payload
        return status, payload, False, self._hold_for(source) if status < 500 else 0.0

    def _execute(self, key: str | None, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        source = body["source"]
        if "unavailable" in source:
            return 503, _error("api_error", "service_unavailable", "The payment gateway is temporarily unavailable.")
        if "decline" in source:
            match = re.search(r"decline_([a-z_]+)", source)
            decline_code = match.group(1) if match else "insufficient_funds"
            reason = decline_code.replace("_", " ")
            payload = _error("card_error", "card_declined", f"Your card was declined ({reason}).")
            payload["error"]["decline_code"] = decline_code
            return 402, payload
        charge = {
            "id": "ch_" + secrets.token_hex(12),
            "object": "charge",
            "status": "succeeded",
            "amount": body["amount"],
            "currency": body["currency"],
            "source": source,
            "description": body.get("description"),
            "metadata": body.get("metadata") or {},
            "created": int(time.time()),
        }
        with self._lock:
            self._charges.append({**charge, "idempotency_key": key})
        return 201, charge

    def _hold_for(self, source: str) -> float:
        if "hold" in source:
            return self.hold_max
        if "timeout" in source:
            return self.timeout_hold
        return 0.0

    def hold(self, seconds: float) -> None:
        """Block this request's thread until released, stopped, or ``seconds`` have passed."""
        event = threading.Event()
        with self._held_changed:
            if self._stopping:
                return
            self._holds.append(event)
            self._held_total += 1
            self._held_changed.notify_all()
        event.wait(seconds)

    def record_request(self, key: str | None, source: str | None, status: int, replayed: bool) -> None:
        with self._lock:
            self._requests.append({"idempotency_key": key, "source": source, "status": status, "replayed": replayed})

    def charge(self, charge_id: str) -> dict[str, Any] | None:
        with self._lock:
            for c in self._charges:
                if c["id"] == charge_id:
                    return {k: v for k, v in c.items() if k != "idempotency_key"}
        return None


def _invalid(body: Any) -> str | None:
    if not isinstance(body, dict):
        return "The request body must be a JSON object."
    amount = body.get("amount")
    if not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
        return "amount must be a positive integer in the currency's minor units."
    if not isinstance(body.get("currency"), str) or not re.fullmatch(r"[A-Za-z]{3}", body["currency"]):
        return "currency must be a three-letter ISO code."
    if not isinstance(body.get("source"), str) or not body["source"]:
        return "source (a payment token) is required."
    if not isinstance(body.get("metadata", {}), dict):
        return "metadata must be an object."
    return None


def _error(kind: str, code: str, message: str) -> dict[str, Any]:
    return {"error": {"type": kind, "code": code, "message": message}}


class _Handler(BaseHTTPRequestHandler):
    gateway: PaymentGatewaySandbox
    protocol_version = "HTTP/1.1"
    server_version = "panelflow-gateway-sandbox/1"

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        log.info("%s %s", self.address_string(), format % args)  # the request line: no headers, no key

    def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up waiting or was killed
            self.close_connection = True

    def _read_json(self) -> tuple[Any, str | None]:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            return None, "The request body is too large."
        raw = self.rfile.read(length) if length else b""
        try:
            return json.loads(raw or b"null"), None
        except ValueError:
            return None, "The request body is not valid JSON."

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        g = self.gateway
        if self.path == "/_sandbox/charges":
            return self._send(200, {"object": "list", "data": g.charges})
        if self.path == "/_sandbox/health":
            return self._send(200, {"status": "ok"})
        if self.path.startswith("/v1/") and not g.authorised(self.headers.get("Authorization")):
            return self._send(401, _unauthorised())
        match = re.fullmatch(r"/v1/charges/([A-Za-z0-9_]+)", self.path)
        if match:
            charge = g.charge(match.group(1))
            if charge is None:
                return self._send(404, _error("invalid_request_error", "resource_missing", "No such charge."))
            return self._send(200, charge)
        self._send(404, _error("invalid_request_error", "not_found", "Unrecognized request URL."))

    def do_POST(self) -> None:  # noqa: N802
        g = self.gateway
        body, problem = self._read_json()
        if self.path == "/_sandbox/release":
            g.release()
            return self._send(200, {"released": True})
        if self.path != "/v1/charges":
            return self._send(404, _error("invalid_request_error", "not_found", "Unrecognized request URL."))
        key = self.headers.get("Idempotency-Key")
        source = body.get("source") if isinstance(body, dict) else None
        if not g.authorised(self.headers.get("Authorization")):
            g.record_request(key, source, 401, False)
            return self._send(401, _unauthorised())
        if problem:
            g.record_request(key, source, 400, False)
            return self._send(400, _error("invalid_request_error", "parameter_invalid", problem))
        status, payload, replayed, hold = g.create_charge(key, body)
        g.record_request(key, source, status, replayed)
        headers = {"Idempotent-Replayed": "true"} if replayed else {}
        if key:
            headers["Idempotency-Key"] = key
        if hold:
            g.hold(hold)
        self._send(status, payload, headers)


def _unauthorised() -> dict[str, Any]:
    return _error("invalid_request_error", "api_key_invalid",
                  "Invalid API Key provided (send it as 'Authorization: Bearer <key>').")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Loopback card-payment gateway (panelflow sandbox).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--api-key", default=os.environ.get("PANELFLOW_SANDBOX_GATEWAY_KEY", DEFAULT_API_KEY),
                        help="the key clients must send (default $PANELFLOW_SANDBOX_GATEWAY_KEY or the sandbox key)")
    parser.add_argument("--timeout-hold", type=float, default=30.0,
                        help="seconds the first answer for a 'timeout' token is held")
    parser.add_argument("--hold-max", type=float, default=300.0,
                        help="seconds the first answer for a 'hold' token is held at most")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s payment-gateway %(message)s", stream=sys.stderr)
    gateway = PaymentGatewaySandbox(args.host, args.port, args.api_key, args.timeout_hold, args.hold_max).start()
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
