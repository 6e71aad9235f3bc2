"""A loopback BlackBerry UEM REST API (UEM Web Services v1): authorization, users, groups, devices.

BBSyncWork reads each UEM server's users, their groups and their devices. A UEM server cannot run
here; this one answers as BlackBerry documents the on-premises REST API (developer.blackberry.com,
"BlackBerry UEM REST API reference": Utilities, Users, User devices, Groups), for one tenant::

    POST /{tenantGuid}/api/v1/util/authorization
        Content-Type: application/vnd.blackberry.authorizationrequest-v1+json
        {"provider": "LOCAL"|"AD", "username", "password": <base64>, "domain"?}
        200 text/plain  "besng-basic <opaque>" — the Authorization header value for the other calls
        400 invalid credentials or request (UEM answers 400, not 401, here)
    GET /{tenantGuid}/api/v1/users?offset=0&max=100&query=<field>=<value, * wildcard>
        200 application/vnd.blackberry.users-v1+json {"users": [{"guid", "username", "displayName",
            "emailAddress", "links": [{"rel", "href"}]}]}
    GET /{tenantGuid}/api/v1/users/{userGuid}/groups        → {"groups": [{"guid", "name", "description"}]}
    GET /{tenantGuid}/api/v1/users/{userGuid}/userDevices   → {"userDevices": [{"guid", "enrollmentState",
            "enrollmentType", "lastContactTime", "clientVersion", "outOfComplianceInfo": [{"date",
            "reason", "displayName"}], "device": {"guid", "hardwareModel", "hardwareVendorCompanyName",
            "os", "osFamilyName", "osVersion", "ownership", "compromised", "activationDate", …}}]}
    GET /{tenantGuid}/api/v1/util/ping                     200 text/plain uptime (no authorization)
    errors: application/vnd.blackberry.error-v1+json {"id", "subStatusCode", "message"};
    401 without a valid Authorization value; 404 another tenant or an unknown user.

**Sandbox-only, not UEM's**: ``add_user(...)``, ``add_device(user_guid, ...)``, ``remove_user``,
``remove_device``, ``set_device(...)`` (what users and devices do on their own), ``revoke()`` (every
authorization value stops working: what a UEM restart does), ``fail_devices(user_guid)`` (that
user's device list answers 500), ``throttle(n)``; ``.requests`` records method, path and status.

Run it: ``python -m sandbox.blackberry_uem --port 8783 [--tenant S12345678 --username admin
--password PW] [--users 5]``; the defaults are sandbox values, not secrets.
"""

from __future__ import annotations

import argparse
import base64
import hmac
import json
import logging
import os
import re
import secrets
import signal
import sys
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

log = logging.getLogger("panelflow.sandbox.blackberry_uem")

TENANT, USERNAME, PASSWORD = "S12345678", "panelflow-api", "sandbox-Passw0rd"
AUTH_MEDIA = "application/vnd.blackberry.authorizationrequest-v1+json"
MEDIA = {"users": "application/vnd.blackberry.users-v1+json", "groups": "application/vnd.blackberry.groups-v1+json",
         "userDevices": "application/vnd.blackberry.userdevices-v1+json"}
ERROR_MEDIA = "application/vnd.blackberry.error-v1+json"


class BlackBerryUemSandbox:
    """``start()`` → listening at ``url`` (the connection's host); routes under ``/{tenant}/api/v1``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, tenant: str = TENANT, username: str = USERNAME,
                 password: str = PASSWORD):
        self.host, self.port, self.tenant, self.username, self.password = host, port, tenant, username, password
        self._lock = threading.Lock()
        self.users: dict[str, dict[str, Any]] = {}           # guid → user, in creation order
        self.groups: dict[str, list[str]] = {}               # user guid → group names
        self.devices: dict[str, dict[str, dict[str, Any]]] = {}  # user guid → device guid → userDevice
        self._tokens: set[str] = set()
        self._failing: set[str] = set()
        self._throttle = 0
        self.requests: list[dict[str, Any]] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- what users and devices do --------------------------------------------------------------

    def add_user(self, username: str, *, display_name: str | None = None, email: str | None = None,
                 groups: tuple[str, ...] = (), guid: str | None = None) -> str:
        guid = guid or str(uuid.uuid4())
        with self._lock:
            self.users[guid] = {"guid": guid, "username": username, "displayName": display_name or username,
                                "emailAddress": email, "links": [
                                    {"rel": "groups", "href": f"{self.url}/{self.tenant}/api/v1/users/{guid}/groups"}]}
            self.groups[guid] = list(groups)
            self.devices[guid] = {}
        return guid

    def add_device(self, user_guid: str, *, model: str = "iPhone 15", os: str = "iOS 17.4", family: str = "ios",
                   ownership: str = "CORPORATE", state: str = "ACTIVE", compromised: bool = False,
                   out_of_compliance: tuple[str, ...] = (), last_contact: str = "2026-12-06T22:15:00.00Z",
                   guid: str | None = None) -> str:
        # a given userDevice GUID fixes the hardware's too (a restarted demo sandbox: same devices)
        hardware = str(uuid.uuid5(uuid.NAMESPACE_URL, f"uem-device:{guid}")) if guid else str(uuid.uuid4())
        guid = guid or str(uuid.uuid4())
        device = {"guid": guid, "enrollmentState": state, "enrollmentType": ["MDM_CONTROLS"], "language": "en_US",
                  "lastContactTime": last_contact, "clientVersion": "12.47.0.158", "checkedOut": False,
                  "outOfComplianceInfo": [{"date": "2026-12-01T08:00:00.00Z", "reason": r, "displayName": r}
                                          for r in out_of_compliance],
                  "device": {"guid": hardware, "hardwareModel": model, "hardwareName": model,
                             "hardwareVendorCompanyName": "Apple Inc" if family == "ios" else "Samsung",
                             "os": os, "osFamilyName": family, "osVersion": os.split()[-1], "ownership": ownership,
                             "compromised": compromised, "activationDate": "2026-01-10T09:00:00.00Z"},
                  "links": [{"rel": "user", "href": f"{self.url}/{self.tenant}/api/v1/users/{user_guid}"}]}
        with self._lock:
            self.devices[user_guid][guid] = device
        return guid

    def set_device(self, user_guid: str, guid: str, **changes) -> None:
        """Change a device: top-level userDevice fields, or ``device={…}`` fields."""
        with self._lock:
            device = self.devices[user_guid][guid]
            device["device"].update(changes.pop("device", {}))
            device.update(changes)

    def remove_device(self, user_guid: str, guid: str) -> None:
        with self._lock:
            del self.devices[user_guid][guid]

    def remove_user(self, guid: str) -> None:
        with self._lock:
            del self.users[guid], self.groups[guid], self.devices[guid]

    def revoke(self) -> None:
        with self._lock:
            self._tokens.clear()

    def fail_devices(self, user_guid: str) -> None:
        with self._lock:
            self._failing.add(user_guid)

    def throttle(self, count: int) -> None:
        with self._lock:
            self._throttle += count

    def calls(self, pattern: str) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(r) for r in self.requests if re.search(pattern, r["path"])]

    # -- the API --------------------------------------------------------------------------------

    def authorize(self, body: dict[str, Any]) -> str | None:
        try:
            password = base64.b64decode(str(body.get("password", "")), validate=True).decode()
        except (ValueError, UnicodeDecodeError):
            return None
        if body.get("provider") != "LOCAL" or not hmac.compare_digest(str(body.get("username", "")), self.username) \
                or not hmac.compare_digest(password, self.password):
            return None
        value = "besng-basic " + base64.b64encode(secrets.token_bytes(24)).decode()
        with self._lock:
            self._tokens.add(value)
        return value

    def authorized(self, value: str | None) -> bool:
        with self._lock:
            return value in self._tokens

    def throttled(self) -> bool:
        with self._lock:
            if self._throttle:
                self._throttle -= 1
                return True
            return False

    def user_page(self, offset: int, limit: int, query: str | None) -> list[dict[str, Any]]:
        with self._lock:
            users = sorted(self.users.values(), key=lambda u: u["username"])
        if query:
            field, _, pattern = query.partition("=")
            regex = re.compile("^" + ".*".join(map(re.escape, pattern.split("*"))) + "$", re.IGNORECASE)
            users = [u for u in users if regex.match(str(u.get(field) or ""))]
        return [dict(u) for u in users[offset:offset + limit]]

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> "BlackBerryUemSandbox":
        handler = type("Handler", (_Handler,), {"sandbox": self})
        self._server = ThreadingHTTPServer((self.host, self.port), handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="uem-sandbox", daemon=True)
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

    def __enter__(self) -> "BlackBerryUemSandbox":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _error(kind: str, code: int, message: str) -> dict[str, Any]:
    return {"id": kind, "subStatusCode": code, "message": message}


class _Handler(BaseHTTPRequestHandler):
    sandbox: BlackBerryUemSandbox
    protocol_version = "HTTP/1.1"
    server_version = "panelflow-uem-sandbox/1"

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        log.info("%s %s", self.address_string(), format % args)  # the request line only: never the header

    def _send(self, status: int, body: Any, media: str = ERROR_MEDIA) -> None:
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        with self.sandbox._lock:
            self.sandbox.requests.append({"method": self.command, "path": urlsplit(self.path).path,
                                          "query": urlsplit(self.path).query, "status": status,
                                          "accept": self.headers.get("Accept")})
        self.send_response(status)
        self.send_header("Content-Type", media)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _route(self) -> str | None:
        prefix = f"/{self.sandbox.tenant}/api/v1"
        path = urlsplit(self.path).path
        if not path.startswith(prefix + "/"):
            self._send(404, _error("NOT_FOUND", 404, "Tenant not found."))
            return None
        return path[len(prefix):]

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        route = self._route()
        if route is None:
            return
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if route != "/util/authorization":
            return self._send(404, _error("NOT_FOUND", 404, "Resource not found."))
        if (self.headers.get("Content-Type") or "").split(";")[0].strip() != AUTH_MEDIA:
            return self._send(415, _error("UNSUPPORTED_MEDIA_TYPE", 415, f"Expected {AUTH_MEDIA}."))
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            return self._send(400, _error("INVALID_REQUEST", 400, "Malformed JSON."))
        value = self.sandbox.authorize(body if isinstance(body, dict) else {})
        if value is None:
            return self._send(400, _error("INVALID_CREDENTIALS", 400, "Invalid credentials."))
        self._send(200, value, media="text/plain")

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        s = self.sandbox
        route = self._route()
        if route is None:
            return
        if route == "/util/ping":
            return self._send(200, "uptime 1234", media="text/plain")
        if not s.authorized(self.headers.get("Authorization")):
            return self._send(401, _error("NOT_AUTHENTICATED", 401, "Authentication required."))
        if s.throttled():
            return self._send(429, _error("TOO_MANY_REQUESTS", 429, "Too many requests."))
        query = {k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()}
        if route == "/users":
            try:
                offset, limit = int(query.get("offset", 0)), int(query.get("max", 100))
            except ValueError:
                return self._send(400, _error("INVALID_REQUEST", 400, "offset and max must be numbers."))
            if offset < 0 or not 1 <= limit <= 1000:
                return self._send(400, _error("INVALID_REQUEST", 400, "offset >= 0, 1 <= max <= 1000."))
            return self._send(200, {"users": s.user_page(offset, limit, query.get("query"))}, MEDIA["users"])
        match = re.fullmatch(r"/users/([^/]+)/(groups|userDevices)", route)
        if match is None:
            return self._send(404, _error("NOT_FOUND", 404, "Resource not found."))
        guid, what = match.groups()
        with s._lock:
            known, failing = guid in s.users, guid in s._failing
            groups = [{"guid": str(uuid.uuid5(uuid.NAMESPACE_OID, g)), "name": g} for g in s.groups.get(guid, [])]
            devices = json.loads(json.dumps(list(s.devices.get(guid, {}).values())))
        if not known:
            return self._send(404, _error("USER_NOT_FOUND", 404, "User not found."))
        if what == "groups":
            return self._send(200, {"groups": groups}, MEDIA["groups"])
        if failing:
            return self._send(500, _error("INTERNAL_ERROR", 500, "Unable to read the user's devices."))
        self._send(200, {"userDevices": devices}, MEDIA["userDevices"])


def demo(sandbox: BlackBerryUemSandbox, users: int) -> None:
    """``users`` users, each with an iPhone and every second one with a Galaxy too; their GUIDs are
    derived from the names, so a restarted sandbox holds the same users and devices and the next sync
    sees no one gone and re-added."""
    def stable(name: str) -> str:
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"uem:{sandbox.tenant}/{name}"))

    for n in range(1, users + 1):
        user = sandbox.add_user(f"user{n:02d}", email=f"user{n:02d}@contoso.example", groups=("Sales",),
                                guid=stable(f"user{n:02d}"))
        sandbox.add_device(user, guid=stable(f"user{n:02d}/iphone"))
        if n % 2 == 0:
            sandbox.add_device(user, model="Galaxy S24", os="Android 14", family="android", ownership="PERSONAL",
                               guid=stable(f"user{n:02d}/galaxy"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Loopback BlackBerry UEM REST API (panelflow sandbox).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8783)
    parser.add_argument("--tenant", default=TENANT)
    parser.add_argument("--username", default=USERNAME)
    parser.add_argument("--password", default=os.environ.get("PANELFLOW_SANDBOX_BLACKBERRY_PASSWORD", PASSWORD),
                        help="default: $PANELFLOW_SANDBOX_BLACKBERRY_PASSWORD, else the sandbox's own")
    parser.add_argument("--users", type=int, default=5, help="demo users, each with one or two devices")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s uem %(message)s", stream=sys.stderr)
    sandbox = BlackBerryUemSandbox(args.host, args.port, args.tenant, args.username, args.password).start()
    demo(sandbox, args.users)
    log.info("listening on %s/%s/api/v1", sandbox.url, sandbox.tenant)
    stopped = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopped.set())
    while not stopped.wait(1):
        pass
    sandbox.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
