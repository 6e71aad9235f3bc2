"""A loopback Ingram Micro Reseller API (v6): OAuth client credentials, order details, order cancel.

IngramCancelNoticesWork cancels Ingram orders (a subscription bought through the reseller API is a
line of a sales order) within their notice window. Ingram's own sandbox cannot lose an answer or
refuse on demand; this one can, with the request and answer shapes Ingram documents
(developer.ingrammicro.com, Reseller v6; the ``xi-sdk-resellers`` OpenAPI clients)::

    POST /oauth/oauth20/token (also /oauth/oauth30/token)    form grant_type=client_credentials,
        client_id, client_secret → 200 {"access_token", "token_type": "Bearer", "expires_in"}
        400 {"error": "invalid_client", "error_description"} wrong credentials or grant
    every /resellers request needs ``Authorization: Bearer <token>`` (else 401 Apigee
    {"fault": {"faultstring": "Invalid Access Token", "detail": {"errorcode"}}}),
    ``IM-CustomerNumber`` (the registered one, else {"faultcode": "Server", "faultstring": "Invalid
    customer number. …"}), ``IM-CountryCode`` and ``IM-CorrelationID`` (else 400); answers echo
    ``IM-CorrelationID`` and ``IM-SenderID``.
    GET    /resellers/v6.1/orders/{ordernumber}   200 {"ingramOrderNumber", "orderStatus", …} · 404
    DELETE /resellers/v6/orders/{OrderNumber}      200 (empty) when the order is on customer hold;
        400 once released to the warehouse (shipped) or already cancelled · 404 unknown order

Order statuses here: ``CUSTOMER HOLD`` (cancellable), ``SHIPPED``, ``CANCELLED``.

**Sandbox-only, not Ingram's**: ``add_order(number, status=…)``, ``lose_answer(number)`` (the next
cancel of that order is executed, then the connection is closed without an answer — what a
timeout looks like to the client), ``throttle(n)`` (the next ``n`` API requests get 429),
``GET /_sandbox/health``; ``.requests`` records method, path, correlation id and status.

Run it: ``python -m sandbox.ingram --port 8782 [--client-id ID --client-secret SECRET
--customer-number 20-222222] [--orders N]``; the defaults are sandbox values, not secrets.
"""

from __future__ import annotations

import argparse
import hmac
import json
import logging
import os
import secrets
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

log = logging.getLogger("panelflow.sandbox.ingram")

CLIENT_ID, CLIENT_SECRET, CUSTOMER_NUMBER = "im_sandbox_client", "im_sandbox_secret", "20-222222"
TOKEN_PATHS = ("/oauth/oauth20/token", "/oauth/oauth30/token")
TOKEN_LIFETIME = 86399


class IngramSandbox:
    """``start()`` → listening at ``url`` (the connection's host)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, client_id: str = CLIENT_ID,
                 client_secret: str = CLIENT_SECRET, customer_number: str = CUSTOMER_NUMBER):
        self.host, self.port = host, port
        self.client_id, self.client_secret, self.customer_number = client_id, client_secret, customer_number
        self._lock = threading.Lock()
        self.orders: dict[str, dict[str, Any]] = {}
        self.tokens: set[str] = set()
        self.requests: list[dict[str, Any]] = []
        self._lose: set[str] = set()
        self._throttle = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- data and control -----------------------------------------------------------------------

    def add_order(self, number: str, status: str = "CUSTOMER HOLD", customer_order_number: str = "") -> None:
        with self._lock:
            self.orders[number] = {"ingramOrderNumber": number, "orderStatus": status,
                                   "customerOrderNumber": customer_order_number, "orderType": "S"}

    def status(self, number: str) -> str:
        with self._lock:
            return self.orders[number]["orderStatus"]

    def lose_answer(self, number: str) -> None:
        with self._lock:
            self._lose.add(number)

    def throttle(self, count: int) -> None:
        with self._lock:
            self._throttle += count

    def revoke_tokens(self) -> None:
        with self._lock:
            self.tokens.clear()

    def calls(self, method: str) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(r) for r in self.requests if r["method"] == method]

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> "IngramSandbox":
        handler = type("Handler", (_Handler,), {"sandbox": self})
        self._server = ThreadingHTTPServer((self.host, self.port), handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="ingram-sandbox", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self) -> "IngramSandbox":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- the API --------------------------------------------------------------------------------

    def token(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        if form.get("grant_type") != "client_credentials":
            return 400, {"error": "unsupported_grant_type",
                         "error_description": "grant_type must be client_credentials"}
        if not (hmac.compare_digest(form.get("client_id", ""), self.client_id)
                and hmac.compare_digest(form.get("client_secret", ""), self.client_secret)):
            return 400, {"error": "invalid_client", "error_description": "Invalid client credentials"}
        token = secrets.token_urlsafe(24)
        with self._lock:
            self.tokens.add(token)
        return 200, {"access_token": token, "token_type": "Bearer", "expires_in": TOKEN_LIFETIME}

    def throttled(self) -> bool:
        with self._lock:
            if self._throttle:
                self._throttle -= 1
                return True
            return False

    def cancel(self, number: str) -> tuple[int, dict[str, Any] | None, bool]:
        """(status, error body, lose the answer) for a cancel of ``number``."""
        with self._lock:
            order = self.orders.get(number)
            if order is None:
                return 404, _errors("NotFound", f"Order {number} not found."), False
            if order["orderStatus"] == "CANCELLED":
                return 400, _errors("BadRequest", f"Order {number} is already cancelled."), False
            if order["orderStatus"] != "CUSTOMER HOLD":
                return 400, _errors("BadRequest", f"Order {number} has been released to the warehouse and cannot"
                                                  " be canceled."), False
            order["orderStatus"] = "CANCELLED"
            lose = number in self._lose
            self._lose.discard(number)
            return 200, None, lose


def _errors(kind: str, message: str) -> dict[str, Any]:
    return {"errors": [{"id": secrets.token_hex(8), "type": kind, "message": message, "fields": []}]}


class _Handler(BaseHTTPRequestHandler):
    sandbox: IngramSandbox
    protocol_version = "HTTP/1.1"
    server_version = "panelflow-ingram-sandbox/1"

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        log.info("%s %s", self.address_string(), format % args)  # the request line only: never a secret

    def _send(self, status: int, payload: Any = None) -> None:
        data = b"" if payload is None else json.dumps(payload).encode()
        with self.sandbox._lock:
            self.sandbox.requests.append({"method": self.command, "path": urlsplit(self.path).path, "status": status,
                                          "correlation_id": self.headers.get("IM-CorrelationID")})
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name in ("IM-CorrelationID", "IM-SenderID"):
            if self.headers.get(name):
                self.send_header(name, self.headers[name])
        self.end_headers()
        self.wfile.write(data)

    def _api_guard(self) -> bool:
        """Token, customer number and the required IM- headers; False when an error was sent."""
        s = self.sandbox
        auth = self.headers.get("Authorization") or ""
        with s._lock:
            known = auth.startswith("Bearer ") and auth[7:] in s.tokens
        if not known:
            self._send(401, {"fault": {"faultstring": "Invalid Access Token",
                                       "detail": {"errorcode": "keymanagement.service.invalid_access_token"}}})
            return False
        missing = [h for h in ("IM-CustomerNumber", "IM-CountryCode", "IM-CorrelationID") if not self.headers.get(h)]
        if missing:
            self._send(400, _errors("BadRequest", f"Missing required header(s): {', '.join(missing)}."))
            return False
        if self.headers["IM-CustomerNumber"] != s.customer_number:
            self._send(400, {"faultcode": "Server", "faultstring": "Invalid customer number. The customer number"
                             " provided on the API call does not match the registered customer number."})
            return False
        if s.throttled():
            self._send(429, _errors("TooManyRequests", "Rate limit exceeded."))
            return False
        return True

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode() if length else ""
        if urlsplit(self.path).path in TOKEN_PATHS:
            form = {k: v[0] for k, v in parse_qs(body).items()}
            return self._send(*self.sandbox.token(form))
        self._send(404, _errors("NotFound", "No such resource."))

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        path = urlsplit(self.path).path
        if path == "/_sandbox/health":
            return self._send(200, {"status": "ok"})
        if not path.startswith("/resellers/v6.1/orders/"):
            return self._send(404, _errors("NotFound", "No such resource."))
        if not self._api_guard():
            return
        number = unquote(path.rsplit("/", 1)[1])
        with self.sandbox._lock:
            order = dict(self.sandbox.orders.get(number) or {})
        if not order:
            return self._send(404, _errors("NotFound", f"Order {number} not found."))
        self._send(200, order)

    def do_DELETE(self) -> None:  # noqa: N802 - http.server's naming
        path = urlsplit(self.path).path
        if not path.startswith("/resellers/v6/orders/"):
            return self._send(404, _errors("NotFound", "No such resource."))
        if not self._api_guard():
            return
        status, error, lose = self.sandbox.cancel(unquote(path.rsplit("/", 1)[1]))
        if lose:  # executed, answer lost: the client sees the connection drop
            with self.sandbox._lock:
                self.sandbox.requests.append({"method": "DELETE", "path": path, "status": None,
                                              "correlation_id": self.headers.get("IM-CorrelationID")})
            self.close_connection = True
            self.connection.close()
            return
        self._send(status, error)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Loopback Ingram Micro Reseller API v6 (panelflow sandbox).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8782)
    parser.add_argument("--client-id", default=CLIENT_ID)
    parser.add_argument("--client-secret", default=os.environ.get("PANELFLOW_SANDBOX_INGRAM_SECRET", CLIENT_SECRET),
                        help="default: $PANELFLOW_SANDBOX_INGRAM_SECRET, else the sandbox's own")
    parser.add_argument("--customer-number", default=CUSTOMER_NUMBER)
    parser.add_argument("--orders", type=int, default=5, help="demo orders 20-SBX001 … on customer hold")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s ingram %(message)s", stream=sys.stderr)
    sandbox = IngramSandbox(args.host, args.port, args.client_id, args.client_secret, args.customer_number).start()
    for n in range(1, args.orders + 1):
        sandbox.add_order(f"20-SBX{n:03d}")
    log.info("listening on %s", sandbox.url)
    stopped = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopped.set())
    while not stopped.wait(1):
        pass
    sandbox.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
