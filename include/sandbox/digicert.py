"""A loopback DigiCert CertCentral Services API (v2) that issues real certificates from a test CA.

ProvisioningWork step 2 polls the orders a customer placed, downloads what DigiCert issued and
verifies it before storing it. CertCentral's own sandbox is remote and its orders cannot be made
to issue, fail or hand back a broken certificate on demand; here they can, with the request and
answer shapes DigiCert documents (dev.digicert.com, "Services API"). Every ``/services/v2`` request
needs ``X-DC-DEVKEY: <api key>`` (else 401)::

    GET /services/v2/order/certificate/{order_id}                                       Order info
      200 {"id", "status", "date_created", "validity_years", "order_validity": {"years"},
           "product": {"name_id", "name", "type"}, "product_name_id", "price", "currency",
           "certificate": {"id", "common_name", "dns_names", "csr", "signature_hash", "date_created",
                           "serial_number"?, "thumbprint"?, "valid_from"?, "valid_till"?, "date_issued"?}}
      404 {"errors": [{"code": "not_found|order", "message"}]}
    GET /services/v2/certificate/{certificate_id}/download/format/pem_all    (or pem_noroot)
      200 application/x-pem-file: the leaf, the intermediate (and the root for pem_all)
      404 not_found|certificate · 400 invalid_format (another format: this sandbox serves PEM only)
    429 {"errors": [{"code": "request_limit_exceeded", …}]} with ``Retry-After`` for the next requests a
        test asked to throttle (``throttle()``).

Order statuses are DigiCert's (``pending``, ``needs_approval``, ``issued``, ``rejected``,
``canceled``, ``revoked``, …). ``issue(order_id)`` signs the order's CSR with the sandbox CA
(``sandbox.test_ca``), valid for the order's years from the given moment, and the order becomes
``issued`` with a certificate id.

**Sandbox-only, not DigiCert's**: ``issue(order_id, variant=...)`` (over HTTP ``POST
/_sandbox/orders/{id}/issue {"variant": …}``) hands back a WRONG certificate so tests prove the
step refuses it: ``wrong_key`` (a leaf for another key than the CSR's), ``expired``,
``not_yet_valid``, ``wrong_name``. Also ``POST /_sandbox/orders`` (create an order: what the
panel's order form does at DigiCert), ``POST /_sandbox/orders/{id}/status {"status"}``, ``GET
/_sandbox/ca`` (the root PEM, the trust anchor to configure), ``GET /_sandbox/requests``, ``GET
/_sandbox/health`` — no key needed.

Run it: ``python -m sandbox.digicert --port 8771 [--api-key KEY] [--ca-out root.pem]``; the key
defaults to ``$PANELFLOW_SANDBOX_DIGICERT_KEY`` or ``dc_test_sandbox`` (a sandbox key, not a secret).
"""

from __future__ import annotations

import argparse
import hmac
import itertools
import json
import logging
import os
import re
import signal
import sys
import threading
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import hashes

from sandbox.test_ca import TestCA, Variant, pem

DEFAULT_API_KEY = "dc_test_sandbox"
PREFIX = "/services/v2"
FORMATS = {"pem_all": 3, "pem_noroot": 2}  # how many certificates of the chain each format carries

log = logging.getLogger("panelflow.sandbox.digicert")


def _iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S+00:00")


def _errors(code: str, message: str) -> dict[str, Any]:
    return {"errors": [{"code": code, "message": message}]}


class DigiCertSandbox:
    """The emulator: ``start()`` → listening at ``url`` (the base URL is ``url + "/services/v2"``)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, api_key: str = DEFAULT_API_KEY,
                 ca: TestCA | None = None):
        self.host, self.port, self.api_key = host, port, api_key
        self.ca = ca or TestCA()
        self._lock = threading.Lock()
        self._orders: dict[int, dict[str, Any]] = {}
        self._chains: dict[int, list] = {}   # certificate id → [leaf, intermediate, root]
        self._ids = itertools.count(1001)
        self._cert_ids = itertools.count(50001)
        self._throttle: list[int] = []
        self._requests: list[dict[str, Any]] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> "DigiCertSandbox":
        handler = type("Handler", (_Handler,), {"sandbox": self})
        self._server = ThreadingHTTPServer((self.host, self.port), handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="digicert-sandbox", daemon=True)
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

    def __enter__(self) -> "DigiCertSandbox":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # -- data and control (tests) ---------------------------------------------------------------

    def add_order(self, csr: str, common_name: str, dns_names: list[str] | tuple[str, ...] = (), *,
                  product: str = "ssl_basic", validity_years: int = 1, price: float = 218.0, currency: str = "USD",
                  at: datetime | None = None) -> int:
        """A pending order for ``csr`` (what the panel's order form placed); its id."""
        with self._lock:
            order_id = next(self._ids)
            self._orders[order_id] = {
                "id": order_id, "status": "pending", "date_created": _iso(at or datetime.now(timezone.utc)),
                "validity_years": validity_years, "order_validity": {"years": validity_years},
                "product": {"name_id": product, "name": product.replace("_", " ").title(), "type": "ssl_certificate"},
                "product_name_id": product, "price": price, "currency": currency,
                "certificate": {"common_name": common_name,
                                "dns_names": list(dict.fromkeys([common_name, *dns_names])), "csr": csr,
                                "signature_hash": "sha256", "date_created": _iso(at or datetime.now(timezone.utc))}}
        return order_id

    def issue(self, order_id: int, *, at: datetime | None = None, variant: Variant | str = Variant.GOOD) -> int:
        """Sign the order's CSR (``variant``: a sandbox-only wrong certificate); the certificate id."""
        at = at or datetime.now(timezone.utc)
        with self._lock:
            order = self._orders[order_id]
            cert = order["certificate"]
            chain = self.ca.issue(cert["csr"], names=cert["dns_names"], days=365 * order["validity_years"], at=at,
                                  variant=Variant(variant))
            cert_id = next(self._cert_ids)
            leaf = chain[0]
            self._chains[cert_id] = chain
            cert.update({"id": cert_id, "serial_number": format(leaf.serial_number, "X"),
                         "thumbprint": leaf.fingerprint(hashes.SHA1()).hex().upper(),
                         "valid_from": leaf.not_valid_before_utc.date().isoformat(),
                         "valid_till": leaf.not_valid_after_utc.date().isoformat(), "date_issued": _iso(at)})
            order["status"] = "issued"
        return cert_id

    def set_status(self, order_id: int, status: str) -> None:
        with self._lock:
            self._orders[order_id]["status"] = status

    def throttle(self, count: int = 1, retry_after: int = 1) -> None:
        """Answer the next ``count`` API requests 429 ``request_limit_exceeded`` with ``Retry-After``."""
        with self._lock:
            self._throttle.extend([retry_after] * count)

    @property
    def requests(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(r) for r in self._requests]

    # -- the API --------------------------------------------------------------------------------

    def authorised(self, key: str | None) -> bool:
        return hmac.compare_digest((key or "").encode(), self.api_key.encode())

    def throttled(self) -> int | None:
        with self._lock:
            return self._throttle.pop(0) if self._throttle else None

    def order(self, order_id: int) -> dict[str, Any] | None:
        with self._lock:
            order = self._orders.get(order_id)
            return json.loads(json.dumps(order)) if order else None

    def download(self, cert_id: int, fmt: str) -> str | None:
        with self._lock:
            chain = self._chains.get(cert_id)
        return pem(chain[:FORMATS[fmt]]) if chain else None

    def record(self, method: str, path: str, status: int) -> None:
        with self._lock:
            self._requests.append({"method": method, "path": path, "status": status})


class _Handler(BaseHTTPRequestHandler):
    sandbox: DigiCertSandbox
    protocol_version = "HTTP/1.1"
    server_version = "panelflow-digicert-sandbox/1"

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        log.info("%s %s", self.address_string(), format % args)  # the request line only: never the key

    def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None,
              content_type: str = "application/json") -> None:
        self.sandbox.record(self.command, self.path, status)
        data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _body(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(length) or b"{}") if length else {}

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        s = self.sandbox
        path = urlsplit(self.path).path
        if path == "/_sandbox/health":
            return self._send(200, {"status": "ok"})
        if path == "/_sandbox/requests":
            return self._send(200, {"requests": s.requests})
        if path == "/_sandbox/ca":
            return self._send(200, s.ca.root_pem, content_type="application/x-pem-file")
        if not path.startswith(PREFIX + "/"):
            return self._send(404, _errors("not_found|route", "The endpoint does not exist."))
        if not s.authorised(self.headers.get("X-DC-DEVKEY")):
            return self._send(401, _errors("invalid_api_key", "Bad or missing API key (X-DC-DEVKEY)."))
        retry_after = s.throttled()
        if retry_after is not None:
            return self._send(429, _errors("request_limit_exceeded",
                                           "Service unavailable, please limit request volume."),
                              {"Retry-After": str(retry_after)})
        route = path[len(PREFIX):]
        match = re.fullmatch(r"/order/certificate/(\d+)", route)
        if match:
            order = s.order(int(match.group(1)))
            if order is None:
                return self._send(404, _errors("not_found|order", "The specified order was not found."))
            return self._send(200, order)
        match = re.fullmatch(r"/certificate/(\d+)/download/format/([a-z_]+)", route)
        if match:
            if match.group(2) not in FORMATS:
                return self._send(400, _errors("invalid_format", "This sandbox serves pem_all and pem_noroot."))
            body = s.download(int(match.group(1)), match.group(2))
            if body is None:
                return self._send(404, _errors("not_found|certificate", "The specified certificate was not found."))
            return self._send(200, body, content_type="application/x-pem-file")
        self._send(404, _errors("not_found|route", "The endpoint does not exist."))

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        s = self.sandbox
        path = urlsplit(self.path).path
        try:
            body = self._body()
            if path == "/_sandbox/orders":
                order_id = s.add_order(body["csr"], body["common_name"], body.get("dns_names", ()),
                                       product=body.get("product", "ssl_basic"),
                                       validity_years=int(body.get("validity_years", 1)),
                                       price=float(body.get("price", 218.0)), currency=body.get("currency", "USD"))
                return self._send(201, {"id": order_id})
            match = re.fullmatch(r"/_sandbox/orders/(\d+)/(issue|status)", path)
            if match and match.group(2) == "issue":
                return self._send(200, {"certificate_id": s.issue(int(match.group(1)),
                                                                  variant=body.get("variant", "good"))})
            if match:
                s.set_status(int(match.group(1)), body["status"])
                return self._send(200, {"status": body["status"]})
        except (KeyError, ValueError) as exc:
            return self._send(400, _errors("invalid_request", f"{type(exc).__name__}: {exc}"))
        self._send(404, _errors("not_found|route", "The endpoint does not exist."))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Loopback DigiCert CertCentral Services API (panelflow sandbox).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8771)
    parser.add_argument("--api-key", default=os.environ.get("PANELFLOW_SANDBOX_DIGICERT_KEY", DEFAULT_API_KEY))
    parser.add_argument("--ca-out", help="write the sandbox root CA (the trust anchor to configure) to this file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s digicert %(message)s", stream=sys.stderr)
    sandbox = DigiCertSandbox(args.host, args.port, args.api_key).start()
    if args.ca_out:
        with open(args.ca_out, "w") as out:
            out.write(sandbox.ca.root_pem)
    log.info("listening on %s%s", sandbox.url, PREFIX)
    stopped = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopped.set())
    while not stopped.wait(1):
        pass
    sandbox.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
