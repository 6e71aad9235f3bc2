"""A loopback licence service over TLS that signs licences with its own Ed25519 key.

LicenseWork refreshes the installation's licence from the panel vendor over HTTPS and trusts a
document only when it verifies against the vendor's pinned Ed25519 key. The vendor's real service
is not reachable here (and is not publicly documented), so this sandbox serves the one exchange
``panelflow.hooks.licence_vendor`` describes, behind a real TLS certificate (for ``localhost`` and
``127.0.0.1``, signed by a CA of the sandbox's own: ``ca_file`` is what the connection trusts)::

    GET /v1/licences/current?installation=<id>      Authorization: Bearer <licence key>
        200 {"payload": "<base64 licence JSON>", "signature": "<base64 Ed25519 signature>"}
        401 {"error": {"code": "unauthorized", "message"}}   wrong or missing key
        404 {"error": {"code": "not_found", "message"}}      no licence for that installation

The signing key is made once per TLS folder (``signing.key``, kept across restarts like the CA);
``public_key_b64`` is what the connection pins.
``sign(fields)`` makes a licence envelope (also what a licence file holds); ``tampered(envelope)``
changes its payload after signing, for the tests that prove a tampered licence is refused.
**Sandbox-only**: ``GET /_sandbox/health`` (no key), ``set_current(installation, envelope)``.

Run it: ``python -m sandbox.licence_vendor --port 8781 --tls-dir DIR [--key KEY] [--installation ID]``;
``DIR/ca.pem`` is the connection's ``ca_file``; the public key is printed at start; with
``--installation`` a year's demo licence is served for that installation. The licence key defaults to
``$PANELFLOW_SANDBOX_LICENCE_KEY`` or ``lic_test_sandbox`` (a sandbox value, not a secret).
"""

from __future__ import annotations

import argparse
import base64
import hmac
import json
import logging
import os
import signal
import ssl
import sys
import tempfile
import threading
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sandbox.registrar_tls import certificates

DEFAULT_KEY = "lic_test_sandbox"
log = logging.getLogger("panelflow.sandbox.licence_vendor")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _signing_key(folder: Path) -> Ed25519PrivateKey:
    """The sandbox's signing key, kept in ``folder`` (``signing.key``) so a restart keeps the key
    a connection already pins."""
    path = folder / "signing.key"
    if path.exists():
        return serialization.load_pem_private_key(path.read_bytes(), None)
    folder.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)
    return key


def demo_licence(installation: str, at: datetime) -> dict[str, Any]:
    """A year's licence for ``installation`` from ``at``: what ``make run``'s sandbox serves."""
    start = at.replace(microsecond=0)
    return {"licence_id": f"DEMO-{installation}", "issued_at": start.isoformat(), "licensee": "panelflow demo",
            "installation_id": installation, "valid_from": start.isoformat(),
            "valid_until": (start + timedelta(days=365)).isoformat(),
            "units": {"mailboxes": 500, "users": 1000, "vms": 50, "tenants": 20}}


class LicenceVendorSandbox:
    """``start()`` → listening at ``url`` (HTTPS); ``ca_file`` is the CA its certificate chains to."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, licence_key: str = DEFAULT_KEY,
                 tls_dir: str | Path | None = None):
        self.host, self.port, self.licence_key = host, port, licence_key
        self._tmp = None if tls_dir else tempfile.TemporaryDirectory(prefix="licence-sandbox-")
        self.tls_dir = Path(tls_dir or self._tmp.name)
        self.signing_key = _signing_key(self.tls_dir)
        self._lock = threading.Lock()
        self._current: dict[str, dict[str, str]] = {}
        self.requests: list[dict[str, Any]] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- keys and licences ----------------------------------------------------------------------

    @property
    def public_key_b64(self) -> str:
        return _b64(self.signing_key.public_key().public_bytes(serialization.Encoding.Raw,
                                                              serialization.PublicFormat.Raw))

    def sign(self, fields: dict[str, Any], key: Ed25519PrivateKey | None = None) -> dict[str, str]:
        """A licence envelope: ``fields`` as JSON bytes and their signature (by ``key``: another
        signer, for tests; default the vendor's)."""
        payload = json.dumps(fields, sort_keys=True).encode()
        return {"payload": _b64(payload), "signature": _b64((key or self.signing_key).sign(payload))}

    @staticmethod
    def tampered(envelope: dict[str, str], **changes) -> dict[str, str]:
        """The envelope with its payload changed after signing (the signature left as it was)."""
        fields = json.loads(base64.b64decode(envelope["payload"]))
        return {**envelope, "payload": _b64(json.dumps({**fields, **changes}, sort_keys=True).encode())}

    def set_current(self, installation: str, envelope: dict[str, str]) -> None:
        with self._lock:
            self._current[installation] = envelope

    def current(self, installation: str) -> dict[str, str] | None:
        with self._lock:
            return self._current.get(installation)

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def ca_file(self) -> str:
        return str(certificates(self.tls_dir)[0])

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    def start(self) -> "LicenceVendorSandbox":
        _, _, cert, key = certificates(self.tls_dir)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(str(cert), str(key))
        handler = type("Handler", (_Handler,), {"sandbox": self})
        self._server = ThreadingHTTPServer((self.host, self.port), handler)
        self._server.daemon_threads = True
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="licence-sandbox", daemon=True)
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
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> "LicenceVendorSandbox":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class _Handler(BaseHTTPRequestHandler):
    sandbox: LicenceVendorSandbox
    protocol_version = "HTTP/1.1"
    server_version = "panelflow-licence-sandbox/1"

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        log.info("%s %s", self.address_string(), format % args)  # the request line only: never the key

    def _send(self, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        self.sandbox.requests.append({"path": self.path, "status": status})
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        s = self.sandbox
        parts = urlsplit(self.path)
        if parts.path == "/_sandbox/health":
            return self._send(200, {"status": "ok"})
        if parts.path != "/v1/licences/current":
            return self._send(404, {"error": {"code": "not_found", "message": "No such resource."}})
        auth = self.headers.get("Authorization") or ""
        if not hmac.compare_digest(auth.encode(), f"Bearer {s.licence_key}".encode()):
            return self._send(401, {"error": {"code": "unauthorized", "message": "Unknown licence key."}})
        installation = (parse_qs(parts.query).get("installation") or [""])[0]
        envelope = s.current(installation)
        if envelope is None:
            return self._send(404, {"error": {"code": "not_found",
                                              "message": f"No licence for installation {installation!r}."}})
        self._send(200, envelope)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Loopback licence service over TLS (panelflow sandbox).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8781)
    parser.add_argument("--tls-dir", required=True, help="keeps ca.pem (the connection's ca_file) across restarts")
    parser.add_argument("--key", default=os.environ.get("PANELFLOW_SANDBOX_LICENCE_KEY", DEFAULT_KEY))
    parser.add_argument("--installation", help="serve a year's demo licence for this installation id")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s licence %(message)s", stream=sys.stderr)
    sandbox = LicenceVendorSandbox(args.host, args.port, args.key, tls_dir=args.tls_dir).start()
    if args.installation:
        sandbox.set_current(args.installation, sandbox.sign(demo_licence(args.installation,
                                                                         datetime.now(timezone.utc))))
    log.info("listening on %s; pin public_key %s; trust %s", sandbox.url, sandbox.public_key_b64, sandbox.ca_file)
    stopped = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopped.set())
    while not stopped.wait(1):
        pass
    sandbox.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
