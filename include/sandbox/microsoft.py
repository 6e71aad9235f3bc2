"""One loopback HTTP server for the Microsoft side: Microsoft Graph v1.0 (with the identity
platform's token endpoint), Partner Center and the Azure Retail Prices API.

Each API is a plain object with ``handle(request) -> Response | None`` (``None``: not my path);
``TokenIssuer`` (below) is the identity platform's token endpoint they all trust,
so the shapes live in their own modules — ``microsoft_graph.py`` (Graph + tokens) and
``partner_center.py`` (Partner Center + Retail Prices) — and tests can drive one API's state
in-process while the hooks talk real HTTP to this server.

Run it: ``python -m sandbox.microsoft --host 127.0.0.1 --port 8767 [module options]``.
Tests: ``issuer = TokenIssuer(); MicrosoftSandbox([issuer, GraphApi(issuer, …), PartnerCenterApi(issuer,
…)]).start()`` → ``.url``. Each module offers ``add_arguments(parser)`` and
``from_arguments(args, issuer)`` for the command line.
"""

from __future__ import annotations

import argparse
import importlib
import json
import signal
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

HERE = Path(__file__).resolve().parent


@dataclass
class Request:
    method: str
    path: str                      # without the query string
    query: dict[str, list[str]]
    headers: Any                   # email.message.Message: case-insensitive .get()
    body: bytes
    base_url: str                  # http://host:port of this server, for nextLink/deltaLink

    def json(self) -> Any:
        return json.loads(self.body or b"null")

    def arg(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[0] if values else default


@dataclass
class Response:
    status: int
    body: Any = None               # dict/list → JSON; bytes → as is; None → empty
    headers: dict[str, str] = field(default_factory=dict)


class TokenIssuer:
    """The identity platform's client-credentials endpoint, shared by every API of the sandbox.

    ``POST /{tenant}/oauth2/v2.0/token`` (form: grant_type=client_credentials, client_id,
    client_secret, scope) → ``{"access_token", "token_type": "Bearer", "expires_in"}``. Apps are
    registered per tenant (``register(tenant, client_id, secret)``; ``"*"`` = any tenant, as a
    multi-tenant partner app). APIs call ``authorise(request)`` → the token's tenant, or a 401
    ``Response`` (unknown, expired or revoked token). ``expire_all()`` makes every issued token
    expire now (a token expiring mid-sync); ``fail_tenant(t)`` makes that tenant's logins fail.
    """

    def __init__(self, lifetime: int = 3600):
        import secrets as _secrets
        import time as _time

        self._secrets, self._time = _secrets, _time
        self.lifetime = lifetime
        self.apps: dict[tuple[str, str], str] = {}
        self.tokens: dict[str, tuple[str, float]] = {}
        self.failing: set[str] = set()
        self.issued = 0
        self.lock = threading.Lock()

    def register(self, tenant: str, client_id: str, secret: str) -> None:
        self.apps[(tenant, client_id)] = secret

    def expire_all(self) -> None:
        with self.lock:
            self.tokens = {t: (tenant, 0.0) for t, (tenant, _) in self.tokens.items()}

    def fail_tenant(self, tenant: str) -> None:
        self.failing.add(tenant)

    def handle(self, req: Request) -> Response | None:
        parts = req.path.strip("/").split("/")
        if req.method != "POST" or len(parts) != 4 or parts[1:] != ["oauth2", "v2.0", "token"]:
            return None
        tenant = parts[0]
        form = {k: v[0] for k, v in parse_qs(req.body.decode()).items()}
        if form.get("grant_type") != "client_credentials":
            return Response(400, {"error": "unsupported_grant_type"})
        secret = self.apps.get((tenant, form.get("client_id", ""))) or self.apps.get(("*", form.get("client_id", "")))
        if tenant in self.failing or secret is None or secret != form.get("client_secret"):
            return Response(401, {"error": "invalid_client",
                                  "error_description": f"AADSTS7000215: Invalid client secret for tenant {tenant}."})
        token = self._secrets.token_urlsafe(24)
        with self.lock:
            self.tokens[token] = (tenant, self._time.time() + self.lifetime)
            self.issued += 1
        return Response(200, {"token_type": "Bearer", "expires_in": self.lifetime, "ext_expires_in": self.lifetime,
                              "access_token": token})

    def authorise(self, req: Request) -> str | Response:
        auth = req.headers.get("Authorization") or ""
        token = auth[7:] if auth.startswith("Bearer ") else ""
        with self.lock:
            entry = self.tokens.get(token)
        if entry is None or entry[1] <= self._time.time():
            return Response(401, {"error": {"code": "InvalidAuthenticationToken",
                                            "message": "Access token has expired or is not yet valid."}},
                            {"WWW-Authenticate": 'Bearer error="invalid_token"'})
        return entry[0]


def load(module: str):
    """A sibling API module of this package (``microsoft_graph``, ``partner_center``)."""
    return importlib.import_module(f"sandbox.{module}")


class _Handler(BaseHTTPRequestHandler):
    sandbox: "MicrosoftSandbox"
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # request lines only, never headers (tokens)
        if self.sandbox.verbose:
            sys.stderr.write("%s\n" % (fmt % args))

    def _dispatch(self) -> None:
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        host, port = self.server.server_address[:2]
        req = Request(self.command, parts.path, parse_qs(parts.query), self.headers, body, f"http://{host}:{port}")
        resp = None
        for api in self.sandbox.apis:
            resp = api.handle(req)
            if resp is not None:
                break
        if resp is None:
            resp = Response(404, {"error": {"code": "NotFound", "message": f"no such path {parts.path}"}})
        payload = resp.body
        headers = dict(resp.headers)
        if isinstance(payload, (dict, list)):
            payload = json.dumps(payload, default=str).encode()
            headers.setdefault("Content-Type", "application/json")
        payload = payload or b""
        self.send_response(resp.status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _dispatch


class MicrosoftSandbox:
    def __init__(self, apis: list, host: str = "127.0.0.1", port: int = 0, verbose: bool = False):
        self.apis = apis
        self.host, self.port, self.verbose = host, port, verbose
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> "MicrosoftSandbox":
        handler = type("Handler", (_Handler,), {"sandbox": self})
        self._server = ThreadingHTTPServer((self.host, self.port), handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, name="microsoft-sandbox", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="microsoft.py", description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8767)
    p.add_argument("--verbose", action="store_true")
    # Partner Center first: its pricing API shares Graph's /v1.0 prefix (/v1.0/sales/pricesheets) and
    # claims only its own paths, while Graph answers every /v1.0 path (403 to a tenant it lacks)
    modules = [m for m in ("partner_center", "microsoft_graph") if (HERE / f"{m}.py").exists()]
    for m in modules:
        load(m).add_arguments(p)
    a = p.parse_args(argv)
    issuer = TokenIssuer()
    apis = [issuer] + [load(m).from_arguments(a, issuer) for m in modules]
    graph = next((x for x in apis if type(x).__name__ == "GraphApi"), None)
    if graph is not None:   # SharePoint Online's routes answer in front of the rest of Graph
        apis.insert(apis.index(graph), load("graph_sites").SharePointSites(graph))
    sandbox = MicrosoftSandbox(apis, a.host, a.port, a.verbose).start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(f"microsoft sandbox on {sandbox.url} ({', '.join(modules) or 'no APIs'})", flush=True)
    stop.wait()
    sandbox.stop()
    return 0


if __name__ == "__main__":
    sys.modules.setdefault("sandbox.microsoft", sys.modules["__main__"])  # one copy for the API modules
    sys.exit(main())
