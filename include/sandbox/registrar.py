"""A loopback domain registrar (REST/JSON API) for tests and ``make run``.

Registrars' sandboxes are remote, shared and slow to reset; the cases DomainNameDataSyncThread
must survive — a list that spans pages, a registrar that answers 429 with ``Retry-After``, one
domain whose detail fails while the others answer, a contact that changes — are produced here on
demand, so the same data drives unit tests and the dev stack.

API (what panelflow's ``RegistrarHook`` speaks; every ``/v1`` request needs
``Authorization: Bearer <api key>``, else 401)::

    GET /v1/domains?page=1&per_page=100        (per_page at most ``max_page_size``)
      200 {"data": [{"name", "status", "expires_at", "updated_at"}, …],
           "meta": {"page", "per_page", "total", "total_pages"}}     domains in name order
    GET /v1/domains/<name>
      200 {"name", "status", "expires_at", "updated_at", "nameservers", "locked", "auto_renew",
           "contacts": {"registrant"|"admin"|"tech"|"billing": {"handle", "name", "organization",
                        "email", "phone", "address": {"street", "city", "postal_code", "state", "country"}}}}
      404 unknown domain · 500 a failing domain (below)
    429 {"error": {"code": "rate_limited", …}} with ``Retry-After: <seconds>`` when the key has made
        more than ``rate_limit`` requests in the current ``rate_window`` seconds (0: no limit), or
        for the next requests a test asked to throttle (``throttle()``).

A domain whose name contains ``broken``, or that ``fail(name)`` names, answers its detail with
500 every time (its list entry is fine). ``updated_at`` moves whenever the sandbox changes a
domain (``update_domain``, ``update_contact``), as a real registrar's does.

Sandbox-only endpoints, without authentication: ``GET /_sandbox/health``, ``GET
/_sandbox/requests`` (every request: method, path, status). In-process: ``.requests``,
``.domains``, ``add_domain()``, ``update_domain()``, ``update_contact()``, ``remove_domain()``,
``fail()``, ``throttle()``.

Run it: ``python -m sandbox.registrar --host 127.0.0.1 --port 8766 [--api-key KEY]
[--domains 25] [--rate-limit 0] [--rate-window 1] [--max-page-size 100]``; the key defaults to
``$PANELFLOW_SANDBOX_REGISTRAR_KEY`` or ``rk_test_sandbox`` (a sandbox key, not a secret).
"""

from __future__ import annotations

import argparse
import copy
import hmac
import json
import logging
import math
import os
import re
import signal
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

DEFAULT_API_KEY = "rk_test_sandbox"
ROLES = ("registrant", "admin", "tech", "billing")

log = logging.getLogger("panelflow.sandbox.registrar")


def _iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def demo_contact(domain: str, role: str, n: int = 0) -> dict[str, Any]:
    label = domain.split(".")[0]
    return {
        "handle": f"{label[:6].upper()}-{role[:3].upper()}-{n:04d}",
        "name": f"{role.title()} of {label}",
        "organization": f"{label.title()} Ltd",
        "email": f"{role}@{domain}",
        "phone": f"+44.20{n:08d}",
        "address": {"street": f"{n + 1} High Street", "city": "London", "postal_code": "EC1A 1AA", "state": None,
                    "country": "GB"},
    }


def demo_domain(name: str, n: int = 0, *, status: str = "active", expires_at: str | None = None) -> dict[str, Any]:
    """A domain record in the API's shape, with all four contacts."""
    return {
        "name": name,
        "status": status,
        "expires_at": expires_at or f"{2027 + n % 3}-{1 + n % 12:02d}-{1 + n % 28:02d}T00:00:00Z",
        "nameservers": ["ns1.hostmatic.example", "ns2.hostmatic.example"],
        "locked": True,
        "auto_renew": n % 4 != 3,
        "contacts": {role: demo_contact(name, role, n) for role in ROLES},
    }


def demo_domains(count: int = 25) -> list[dict[str, Any]]:
    """``count`` demo domains, the last one ``broken`` (its detail answers 500)."""
    domains = [demo_domain(f"customer{i:03d}.example", i) for i in range(1, count)]
    if count > 0:
        domains.append(demo_domain("broken-detail.example", count))
    return domains


class RegistrarSandbox:
    """The emulator: ``start()`` → listening at ``url``; ``stop()`` ends it."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, api_key: str = DEFAULT_API_KEY,
                 domains: list[dict[str, Any]] | None = None, rate_limit: int = 0, rate_window: float = 1.0,
                 max_page_size: int = 100):
        self.host = host
        self.port = port
        self.api_key = api_key
        self.rate_limit = rate_limit
        self.rate_window = rate_window
        self.max_page_size = max_page_size
        self._lock = threading.Lock()
        self._domains: dict[str, dict[str, Any]] = {}
        self._failing: set[str] = set()
        self._throttle: list[int] = []  # Retry-After seconds for the next requests, in turn
        self._window_start = 0.0
        self._window_count = 0
        self._requests: list[dict[str, Any]] = []
        self._clock = datetime(2026, 1, 1, tzinfo=timezone.utc)  # "updated_at" ticks: deterministic, always moves
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        for domain in demo_domains() if domains is None else domains:
            self.add_domain(domain)

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> "RegistrarSandbox":
        class Handler(_Handler):
            pass

        Handler.registrar = self
        self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="registrar-sandbox", daemon=True)
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

    def __enter__(self) -> "RegistrarSandbox":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # -- data and control (tests) ---------------------------------------------------------------

    def _tick(self) -> str:
        self._clock += timedelta(seconds=1)
        return _iso(self._clock)

    def add_domain(self, domain: dict[str, Any]) -> None:
        record = copy.deepcopy(domain)
        record["name"] = record["name"].lower()
        with self._lock:
            record["updated_at"] = self._tick()
            self._domains[record["name"]] = record

    def update_domain(self, name: str, **changes) -> None:
        with self._lock:
            record = self._domains[name]
            record.update(copy.deepcopy(changes))
            record["updated_at"] = self._tick()

    def update_contact(self, name: str, role: str, **changes) -> None:
        """Change fields of one contact (``address`` fields merge); adds the role if it had none."""
        with self._lock:
            contact = self._domains[name]["contacts"].setdefault(role, {})
            address = changes.pop("address", None)
            contact.update(changes)
            if address:
                contact.setdefault("address", {}).update(address)
            self._domains[name]["updated_at"] = self._tick()

    def remove_contact(self, name: str, role: str) -> None:
        with self._lock:
            self._domains[name]["contacts"].pop(role, None)
            self._domains[name]["updated_at"] = self._tick()

    def remove_domain(self, name: str) -> None:
        with self._lock:
            self._domains.pop(name, None)

    def fail(self, name: str, failing: bool = True) -> None:
        """Make ``name``'s detail answer 500 (or stop doing so)."""
        with self._lock:
            (self._failing.add if failing else self._failing.discard)(name)

    def throttle(self, count: int = 1, retry_after: int = 1) -> None:
        """Answer the next ``count`` API requests 429 with ``Retry-After: retry_after``."""
        with self._lock:
            self._throttle.extend([retry_after] * count)

    @property
    def domains(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return copy.deepcopy(self._domains)

    @property
    def requests(self) -> list[dict[str, Any]]:
        """Every request received: method, path (with query), HTTP status."""
        with self._lock:
            return [dict(r) for r in self._requests]

    # -- the API --------------------------------------------------------------------------------

    def authorised(self, header: str | None) -> bool:
        scheme, _, presented = (header or "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(presented.strip().encode(), self.api_key.encode())

    def rate_limited(self) -> int | None:
        """Retry-After seconds when this request is over the limit, else None (and it counts)."""
        with self._lock:
            if self._throttle:
                return self._throttle.pop(0)
            if not self.rate_limit:
                return None
            now = time.monotonic()
            if now - self._window_start >= self.rate_window:
                self._window_start, self._window_count = now, 0
            if self._window_count >= self.rate_limit:
                return max(1, math.ceil(self.rate_window - (now - self._window_start)))
            self._window_count += 1
            return None

    def list_page(self, page: int, per_page: int) -> dict[str, Any]:
        with self._lock:
            names = sorted(self._domains)
            total = len(names)
            chunk = names[(page - 1) * per_page: page * per_page]
            data = [{k: self._domains[n].get(k) for k in ("name", "status", "expires_at", "updated_at")}
                    for n in chunk]
        return {"data": data, "meta": {"page": page, "per_page": per_page, "total": total,
                                       "total_pages": max(1, math.ceil(total / per_page))}}

    def detail(self, name: str) -> tuple[int, dict[str, Any]]:
        with self._lock:
            record = copy.deepcopy(self._domains.get(name))
            failing = name in self._failing or "broken" in name
        if record is None:
            return 404, _error("not_found", f"No domain {name} in this account.")
        if failing:
            return 500, _error("internal_error", f"The registry did not answer for {name}.")
        return 200, record

    def record(self, method: str, path: str, status: int) -> None:
        with self._lock:
            self._requests.append({"method": method, "path": path, "status": status})


def _error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


class _Handler(BaseHTTPRequestHandler):
    registrar: RegistrarSandbox
    protocol_version = "HTTP/1.1"
    server_version = "panelflow-registrar-sandbox/1"

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        log.info("%s %s", self.address_string(), format % args)  # the request line: no headers, no key

    def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        self.registrar.record(self.command, self.path, status)
        data = json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        r = self.registrar
        url = urlsplit(self.path)
        if url.path == "/_sandbox/health":
            return self._send(200, {"status": "ok"})
        if url.path == "/_sandbox/requests":
            return self._send(200, {"data": r.requests})
        if not url.path.startswith("/v1/"):
            return self._send(404, _error("not_found", "Unrecognized request URL."))
        if not r.authorised(self.headers.get("Authorization")):
            return self._send(401, _error("unauthorized", "Invalid API key (send 'Authorization: Bearer <key>')."))
        retry_after = r.rate_limited()
        if retry_after is not None:
            return self._send(429, _error("rate_limited", "Too many requests."), {"Retry-After": str(retry_after)})
        if url.path == "/v1/domains":
            query = parse_qs(url.query)
            try:
                page = int(query.get("page", ["1"])[0])
                per_page = int(query.get("per_page", ["50"])[0])
            except ValueError:
                return self._send(400, _error("invalid_request", "page and per_page must be integers."))
            if page < 1 or not 1 <= per_page <= r.max_page_size:
                return self._send(400, _error("invalid_request",
                                              f"page >= 1 and 1 <= per_page <= {r.max_page_size}."))
            return self._send(200, r.list_page(page, per_page))
        match = re.fullmatch(r"/v1/domains/([^/]+)", url.path)
        if match:
            status, payload = r.detail(unquote(match.group(1)).lower())
            return self._send(status, payload)
        self._send(404, _error("not_found", "Unrecognized request URL."))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Loopback domain registrar (panelflow sandbox).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8766)
    parser.add_argument("--api-key", default=os.environ.get("PANELFLOW_SANDBOX_REGISTRAR_KEY", DEFAULT_API_KEY),
                        help="the key clients must send (default $PANELFLOW_SANDBOX_REGISTRAR_KEY or the sandbox key)")
    parser.add_argument("--domains", type=int, default=25,
                        help="demo domains to serve (the last one's detail always fails)")
    parser.add_argument("--rate-limit", type=int, default=0, help="requests per window per key (0: no limit)")
    parser.add_argument("--rate-window", type=float, default=1.0, help="the rate limit's window in seconds")
    parser.add_argument("--max-page-size", type=int, default=100)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s registrar %(message)s", stream=sys.stderr)
    registrar = RegistrarSandbox(args.host, args.port, args.api_key, demo_domains(args.domains), args.rate_limit,
                                 args.rate_window, args.max_page_size).start()
    log.info("listening on %s", registrar.url)
    stopped = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopped.set())
    while not stopped.wait(1):
        pass
    registrar.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
