"""A loopback Sectigo reseller API (``CollectSSL``) that issues real certificates from a test CA.

ProvisioningWork step 4 asks Sectigo for each pending order's status and collects the
certificate once it is issued. Sectigo's reseller ("web host reseller", formerly Comodo) API is a
form-POST API at ``https://secure.trust-provider.com/products/``; this emulates the one endpoint
the step uses, as Sectigo documents it (docs.sectigo.com/sps, "CollectSSL")::

    POST /products/download/CollectSSL          (application/x-www-form-urlencoded)
      loginName, loginPassword, orderNumber, queryType (0 status only · 1 status, certificate and
      intermediates/roots · 2 certificate only · 3 intermediates/roots only), responseType (3:
      individually encoded — the only one served here), responseEncoding (0: Base64),
      responseFormat (1: URL-encoded — the only one served here), showValidityPeriod, showFQDN,
      showExtStatus, showStatusDetails (Y/N)
    200 text/plain, URL-encoded:
      errorCode=2  certificate attached · 1 available (queryType 0) · 0 being processed by Sectigo
      certificateStatus, validationStatus, fqdn (showFQDN=Y), notBefore/notAfter (Unix seconds,
      showValidityPeriod=Y, once issued), certificate (Base64 DER, the leaf), caCertificate
      (Base64 DER, repeated: intermediate, root)
      errorCode<0 & errorMessage: -2 unrecognised argument · -3 missing argument · -4 invalid value
      (also an unknown orderNumber) · -16 permission denied (login) · -17 GET instead of POST ·
      -20 the certificate request has been rejected · -21 the certificate has been revoked

Errors travel in the body with HTTP 200, as Sectigo answers them. ``fail(count)`` makes the next
requests answer HTTP 503 (an outage), for the hook's retries.

**Sandbox-only, not Sectigo's**: the newline-delimited response (``responseFormat=0``, Sectigo's
default) and ZIP/PKCS#7 bodies are not served (``-4`` naming the argument): panelflow always asks
for URL-encoded, individually encoded, Base64. ``issue(order_number, variant=...)`` (over HTTP
``POST /_sandbox/orders/{n}/issue variant=…``) hands back a WRONG certificate so tests prove the
step refuses it: ``wrong_key``, ``expired``, ``not_yet_valid``, ``wrong_name``. Also ``POST
/_sandbox/orders`` (form: csr, common_name, dns_names (comma-separated), days — what AutoApplySSL
would take), ``POST /_sandbox/orders/{n}/status status=rejected|revoked|pending``, ``GET
/_sandbox/ca``, ``GET /_sandbox/requests``, ``GET /_sandbox/health``.

Run it: ``python -m sandbox.sectigo --port 8772 [--login-name NAME] [--ca-out root.pem]``; the
password defaults to ``$PANELFLOW_SANDBOX_SECTIGO_PASSWORD`` or ``sectigo_test_sandbox``.
"""

from __future__ import annotations

import argparse
import base64
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
from urllib.parse import parse_qs, urlencode, urlsplit

from cryptography.hazmat.primitives import serialization

from sandbox.test_ca import TestCA, Variant

DEFAULT_LOGIN = "panelflow_reseller"
DEFAULT_PASSWORD = "sectigo_test_sandbox"
COLLECT = "/products/download/CollectSSL"
ARGUMENTS = {"loginName", "loginPassword", "orderNumber", "certificateID", "baseOrderNumber", "queryType",
             "responseType", "responseEncoding", "responseMimeType", "responseFormat", "showValidityPeriod",
             "showFQDN", "showExtStatus", "showStatusDetails", "showMDCDomainDetails"}
MESSAGES = {-2: "'{}' is an unrecognised argument!", -3: "The '{}' argument is missing!",
            -4: "The value of the '{}' argument is invalid!", -16: "Permission denied!",
            -17: "Request used GET rather than POST!", -20: "The certificate request has been rejected!",
            -21: "The certificate has been revoked!"}

log = logging.getLogger("panelflow.sandbox.sectigo")


def _b64(certificate) -> str:
    return base64.b64encode(certificate.public_bytes(serialization.Encoding.DER)).decode()


class SectigoSandbox:
    """The emulator: ``start()`` → listening at ``url`` (the API's base URL is ``url + "/products"``)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, login_name: str = DEFAULT_LOGIN,
                 password: str = DEFAULT_PASSWORD, ca: TestCA | None = None):
        self.host, self.port, self.login_name, self.password = host, port, login_name, password
        self.ca = ca or TestCA()
        self._lock = threading.Lock()
        self._orders: dict[str, dict[str, Any]] = {}
        self._numbers = itertools.count(3040001)
        self._failures = 0
        self._requests: list[dict[str, Any]] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> "SectigoSandbox":
        handler = type("Handler", (_Handler,), {"sandbox": self})
        self._server = ThreadingHTTPServer((self.host, self.port), handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="sectigo-sandbox", daemon=True)
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

    def __enter__(self) -> "SectigoSandbox":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # -- data and control (tests) ---------------------------------------------------------------

    def add_order(self, csr: str, common_name: str, dns_names: list[str] | tuple[str, ...] = (), *,
                  days: int = 365) -> str:
        """A pending order for ``csr`` (what AutoApplySSL placed); its order number."""
        with self._lock:
            number = str(next(self._numbers))
            self._orders[number] = {"csr": csr, "names": list(dict.fromkeys([common_name, *dns_names])),
                                    "days": days, "state": "pending", "chain": None}
        return number

    def issue(self, number: str, *, at: datetime | None = None, variant: Variant | str = Variant.GOOD) -> None:
        """Sign the order's CSR (``variant``: a sandbox-only wrong certificate)."""
        with self._lock:
            order = self._orders[number]
            order["chain"] = self.ca.issue(order["csr"], names=order["names"], days=order["days"],
                                           at=at or datetime.now(timezone.utc), variant=Variant(variant))
            order["state"] = "issued"

    def set_state(self, number: str, state: str) -> None:
        with self._lock:
            self._orders[number]["state"] = state

    def fail(self, count: int = 1) -> None:
        """Answer the next ``count`` requests HTTP 503 (Sectigo unreachable behind its front end)."""
        with self._lock:
            self._failures += count

    @property
    def requests(self) -> list[dict[str, Any]]:
        """Every request: method, path, the form's orderNumber and queryType, the errorCode answered."""
        with self._lock:
            return [dict(r) for r in self._requests]

    # -- the API --------------------------------------------------------------------------------

    def failing(self) -> bool:
        with self._lock:
            if self._failures:
                self._failures -= 1
                return True
            return False

    def collect(self, form: dict[str, str]) -> dict[str, Any]:
        """CollectSSL's answer to ``form`` as URL-encoded fields (a list value repeats its name)."""
        for name in form:
            if name not in ARGUMENTS:
                return _error(-2, name)
        for name in ("loginName", "loginPassword", "queryType"):
            if not form.get(name):
                return _error(-3, name)
        if not (hmac.compare_digest(form["loginName"].encode(), self.login_name.encode())
                and hmac.compare_digest(form["loginPassword"].encode(), self.password.encode())):
            return _error(-16)
        if form.get("responseFormat") != "1":
            return _error(-4, "responseFormat")
        if form.get("responseType", "3") != "3":
            return _error(-4, "responseType")
        if form.get("responseEncoding", "0") != "0":
            return _error(-4, "responseEncoding")
        if form["queryType"] not in ("0", "1", "2", "3"):
            return _error(-4, "queryType")
        with self._lock:
            order = self._orders.get(form.get("orderNumber", ""))
            if order is None:
                return _error(-4, "orderNumber")
            state, chain, names = order["state"], order["chain"], order["names"]
        if state == "rejected":
            return _error(-20)
        if state == "revoked":
            return _error(-21)
        answer: dict[str, Any] = {}
        if form.get("showFQDN") == "Y":
            answer["fqdn"] = names[0]
        if state == "pending":
            return {"errorCode": 0, "certificateStatus": "Awaiting Validation",
                    "validationStatus": "Not Validated", **answer}
        query = form["queryType"]
        answer.update(errorCode=1 if query == "0" else 2, certificateStatus="Issued", validationStatus="Validated")
        if form.get("showValidityPeriod") == "Y":
            answer["notBefore"] = int(chain[0].not_valid_before_utc.timestamp())
            answer["notAfter"] = int(chain[0].not_valid_after_utc.timestamp())
        if query in ("1", "2"):
            answer["certificate"] = _b64(chain[0])
        if query in ("1", "3"):
            answer["caCertificate"] = [_b64(c) for c in chain[1:]]
        return answer

    def record(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self._requests.append(entry)


def _error(code: int, item: str = "") -> dict[str, Any]:
    answer: dict[str, Any] = {"errorCode": code, "errorMessage": MESSAGES[code].format(item)}
    if item:
        answer["errorItem"] = item
    return answer


class _Handler(BaseHTTPRequestHandler):
    sandbox: SectigoSandbox
    protocol_version = "HTTP/1.1"
    server_version = "panelflow-sectigo-sandbox/1"

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        log.info("%s %s", self.address_string(), format % args)  # the request line only: never the form

    def _send(self, status: int, body: str, content_type: str = "text/plain", entry: dict | None = None) -> None:
        self.sandbox.record({"method": self.command, "path": urlsplit(self.path).path, "status": status,
                             **(entry or {})})
        data = body.encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _form(self) -> dict[str, str]:
        length = int(self.headers.get("Content-Length") or 0)
        parsed = parse_qs(self.rfile.read(length).decode(), keep_blank_values=True) if length else {}
        return {k: v[-1] for k, v in parsed.items()}

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        s = self.sandbox
        path = urlsplit(self.path).path
        if path == "/_sandbox/health":
            return self._send(200, "ok")
        if path == "/_sandbox/requests":
            return self._send(200, json.dumps({"requests": s.requests}), "application/json")
        if path == "/_sandbox/ca":
            return self._send(200, s.ca.root_pem, "application/x-pem-file")
        if path == COLLECT:
            return self._send(200, urlencode(_error(-17)), entry={"errorCode": -17})
        self._send(404, "Not Found")

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        s = self.sandbox
        path = urlsplit(self.path).path
        form = self._form()
        if path == COLLECT:
            if s.failing():
                return self._send(503, "Service Unavailable", entry={"errorCode": None})
            answer = s.collect(form)
            entry = {"orderNumber": form.get("orderNumber"), "queryType": form.get("queryType"),
                     "errorCode": answer["errorCode"]}
            return self._send(200, urlencode(answer, doseq=True), entry=entry)
        try:
            if path == "/_sandbox/orders":
                names = [n for n in form.get("dns_names", "").split(",") if n]
                return self._send(201, s.add_order(form["csr"], form["common_name"], names,
                                                   days=int(form.get("days", 365))))
            match = re.fullmatch(r"/_sandbox/orders/(\d+)/(issue|status)", path)
            if match and match.group(2) == "issue":
                s.issue(match.group(1), variant=form.get("variant", "good"))
                return self._send(200, "issued")
            if match:
                s.set_state(match.group(1), form["status"])
                return self._send(200, form["status"])
        except (KeyError, ValueError) as exc:
            return self._send(400, f"{type(exc).__name__}: {exc}")
        self._send(404, "Not Found")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Loopback Sectigo reseller API, CollectSSL (panelflow sandbox).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8772)
    parser.add_argument("--login-name", default=DEFAULT_LOGIN)
    parser.add_argument("--password", default=os.environ.get("PANELFLOW_SANDBOX_SECTIGO_PASSWORD", DEFAULT_PASSWORD))
    parser.add_argument("--ca-out", help="write the sandbox root CA (the trust anchor to configure) to this file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s sectigo %(message)s", stream=sys.stderr)
    sandbox = SectigoSandbox(args.host, args.port, args.login_name, args.password).start()
    if args.ca_out:
        with open(args.ca_out, "w") as out:
            out.write(sandbox.ca.root_pem)
    log.info("listening on %s/products", sandbox.url)
    stopped = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopped.set())
    while not stopped.wait(1):
        pass
    sandbox.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
