"""A loopback Dataverse Web API (Dynamics 365, OData v4 ``/api/data/v9.2``) for tests and ``make run``.

Dataverse environments are remote and their service-protection limits and concurrency failures cannot
be produced on demand; here they can. It answers as Microsoft's Web API reference documents, for the
part panelflow uses, with the identity platform's token endpoint of ``sandbox.microsoft`` in front:

- tokens: ``POST /{tenant}/oauth2/v2.0/token`` (client credentials; :class:`sandbox.microsoft.TokenIssuer`);
  a request without a valid token of the organisation's tenant → 401.
- one server, several organisations: each lives under ``/{org}``, so the organisation URL is
  ``http://host:port/{org}`` and its Web API root ``…/{org}/api/data/v9.2`` (on Dataverse the
  organisation is the host name; below the root the protocol is the same).
- ``GET organizations``, ``businessunits``, ``roles``, ``systemusers`` with ``$select``, ``$filter``
  (``field eq|ne literal`` joined by ``and``: strings in single quotes, GUIDs, integers, true/false/null),
  ``$expand=systemuserroles_association($select=roleid)`` and paging by ``Prefer: odata.maxpagesize=N``
  (answered with ``Preference-Applied``) and ``@odata.nextLink`` (``$skiptoken``). Every record carries
  ``@odata.etag`` (``W/"<version>"``).
- ``GET systemusers(<id>)``; unknown → 404 ``0x80040217``.
- ``PATCH systemusers(<id>)``: ``If-Match`` other than the current ETag → 412 ``0x80060882``; writable
  ``firstname``, ``lastname``, ``accessmode``, ``caltype``; ``isdisabled`` and the keys are read-only
  (on Dataverse a user's status follows Microsoft Entra ID) → 400; 204, or 200 with the record under
  ``Prefer: return=representation``. A write bumps the version and ``modifiedon`` (the sandbox clock).
- ``POST systemusers(<id>)/systemuserroles_association/$ref`` ``{"@odata.id": ".../roles(<id>)"}`` → 204;
  the role already associated → 400 ``0x80040237`` (duplicate key); unknown role → 404.
  ``DELETE …/systemuserroles_association/$ref?$id=.../roles(<id>)`` → 204.
- service protection: while ``throttle(n, retry_after)`` lasts, requests get 429 ``0x80072322`` with
  ``Retry-After`` (seconds).

Controls (tests): ``add_org`` → :class:`Org` (``add_business_unit``, ``add_role``, ``add_user``,
``edit_user`` — a change made in CRM, ``race`` — one made between a client's read and its write,
``users`` raw records), ``throttle``, ``requests`` (method, path,
query and OData/Prefer/If-Match headers of each API request), ``clock`` (``modifiedon`` of the last write);
``DataverseSandbox.connection(tenant, client_id, secret, **extra)`` is an Airflow connection's JSON.

Run it: ``python -m sandbox.dataverse --host 127.0.0.1 --port 8768 [--org demo --tenant demo-tenant
--client-id panelflow-crm --users 25]`` (the client secret: ``$PANELFLOW_SANDBOX_DATAVERSE_SECRET`` or
``dataverse-sandbox-secret``, a sandbox value).
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import signal
import sys
import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import quote, unquote

from sandbox.microsoft import MicrosoftSandbox, Request, Response, TokenIssuer

API = "api/data/v9.2"
WRITABLE = {"firstname", "lastname", "accessmode", "caltype"}
MAX_PAGE = 5000
_PATH = re.compile(r"^/(?P<org>[A-Za-z0-9_-]+)/api/data/v9\.2/(?P<rest>.*)$")
_ONE = re.compile(r"^(?P<set>[a-z]+)\((?P<id>[0-9a-fA-F-]{36})\)(?P<nav>/systemuserroles_association/\$ref)?$")
_CLAUSE = re.compile(r"\s*(?P<field>[A-Za-z_]+)\s+(?P<op>eq|ne)\s+"
                     r"(?P<value>'(?:[^']|'')*'|true|false|null|-?\d+(?![\w-])|[0-9a-fA-F-]{36})\s*")
_LOGGED = ("OData-MaxVersion", "OData-Version", "Accept", "Prefer", "If-Match")
_KEYS = {"systemusers": "systemuserid", "businessunits": "businessunitid", "roles": "roleid",
         "organizations": "organizationid"}
_PROPERTIES = {  # what $select may name, per entity set (the part of each entity type the sandbox keeps)
    "systemusers": {"systemuserid", "domainname", "firstname", "lastname", "isdisabled", "accessmode", "caltype",
                    "_businessunitid_value", "modifiedon"},
    "businessunits": {"businessunitid", "name", "_parentbusinessunitid_value", "modifiedon"},
    "roles": {"roleid", "name", "_businessunitid_value", "modifiedon"},
    "organizations": {"organizationid", "name"},
}


def error(status: int, code: str, message: str, headers: dict | None = None) -> Response:
    return Response(status, {"error": {"code": code, "message": message}}, headers or {})


@dataclass
class Org:
    name: str
    tenant: str
    organizationid: str = ""
    display_name: str = ""
    businessunits: dict[str, dict] = field(default_factory=dict)
    roles: dict[str, dict] = field(default_factory=dict)
    users: dict[str, dict] = field(default_factory=dict)       # raw records, as Dataverse keeps them
    user_roles: dict[str, set[str]] = field(default_factory=dict)
    races: dict[str, list[dict]] = field(default_factory=dict)
    api: "DataverseApi | None" = None
    stable_ids: bool = False

    def __post_init__(self) -> None:
        self.organizationid = self.organizationid or self.new_id("organization", self.name)

    def new_id(self, kind: str, name: str) -> str:
        """A record's GUID: random, or, for a long-running demo, derived from the record's name, so a
        restarted sandbox holds the same records and a sync sees no one gone and re-added."""
        if self.stable_ids:
            return str(uuid.uuid5(uuid.NAMESPACE_URL, f"dataverse:{self.name}/{kind}/{name}"))
        return str(uuid.uuid4())

    def add_business_unit(self, name: str, parent: str | None = None) -> str:
        bu = self.new_id("businessunit", name)
        self.businessunits[bu] = self.api.stamp({"businessunitid": bu, "name": name,
                                                 "_parentbusinessunitid_value": parent})
        return bu

    def add_role(self, name: str, business_unit: str) -> str:
        role = self.new_id("role", f"{business_unit}/{name}")
        self.roles[role] = self.api.stamp({"roleid": role, "name": name, "_businessunitid_value": business_unit})
        return role

    def add_user(self, domainname: str, first: str | None, last: str | None, business_unit: str, *,
                 roles: tuple[str, ...] = (), isdisabled: bool = False, accessmode: int = 0,
                 caltype: int = 0) -> str:
        user = self.new_id("systemuser", domainname)
        self.users[user] = self.api.stamp({
            "systemuserid": user, "domainname": domainname, "firstname": first, "lastname": last,
            "isdisabled": isdisabled, "accessmode": accessmode, "caltype": caltype,
            "_businessunitid_value": business_unit})
        self.user_roles[user] = set(roles)
        return user

    def edit_user(self, user: str, **changes) -> None:
        """A change made in CRM (by someone else): new ETag and ``modifiedon``."""
        self.users[user].update(changes)
        self.api.stamp(self.users[user])

    def race(self, user: str, times: int = 1, **changes) -> None:
        """The next ``times`` PATCHes of the user arrive just after someone else's edit (``changes``)."""
        self.races.setdefault(user, []).extend(dict(changes) for _ in range(times))


class DataverseApi:
    """The Web API of every organisation, behind one :class:`TokenIssuer`."""

    def __init__(self, issuer: TokenIssuer):
        self.issuer = issuer
        self.orgs: dict[str, Org] = {}
        self.requests: list[tuple[str, str, dict]] = []
        self.clock = datetime(2026, 1, 1, tzinfo=timezone.utc)
        self._versions = itertools.count(1000)
        self._throttled = 0
        self._retry_after = 1
        self.lock = threading.RLock()

    def add_org(self, name: str, tenant: str, display_name: str | None = None, *, stable_ids: bool = False) -> Org:
        org = Org(name, tenant, display_name=display_name or name.title(), api=self, stable_ids=stable_ids)
        self.orgs[name] = org
        return org

    def throttle(self, count: int, retry_after: int = 1) -> None:
        self._throttled, self._retry_after = count, retry_after

    def stamp(self, record: dict) -> dict:
        """A new version of a record: its ETag and, the sandbox clock moving on, ``modifiedon``."""
        self.clock += timedelta(seconds=1)
        record["@odata.etag"] = f'W/"{next(self._versions)}"'
        record["modifiedon"] = self.clock.strftime("%Y-%m-%dT%H:%M:%SZ")
        return record

    # -- the server's side --------------------------------------------------------------------

    def handle(self, req: Request) -> Response | None:
        match = _PATH.match(req.path)
        if match is None:
            return None
        with self.lock:
            org = self.orgs.get(match["org"])
            if org is None:
                return error(404, "0x80060888", f"no organisation {match['org']}")
            tenant = self.issuer.authorise(req)
            if isinstance(tenant, Response):
                return tenant
            if tenant != org.tenant:
                return error(401, "0x80048306", "the token was issued for another tenant")
            self.requests.append((req.method, match["rest"], {k: v[0] for k, v in req.query.items()},
                                  {h: req.headers.get(h) for h in _LOGGED if req.headers.get(h) is not None}))
            if self._throttled > 0:
                self._throttled -= 1
                return error(429, "0x80072322", "Number of requests exceeded the limit of 6000 over time window"
                                                " of 300 seconds.", {"Retry-After": str(self._retry_after)})
            base = f"{req.base_url}/{org.name}/{API}"
            rest = unquote(match["rest"])
            try:
                return self._route(org, req, rest, base)
            except _Refused as exc:
                return exc.response

    def _route(self, org: Org, req: Request, rest: str, base: str) -> Response:
        collections = {"systemusers": org.users, "businessunits": org.businessunits, "roles": org.roles,
                       "organizations": {org.organizationid: {"organizationid": org.organizationid,
                                                              "name": org.display_name, "@odata.etag": 'W/"1"'}}}
        if rest in collections and req.method == "GET":
            return self._collection(org, req, rest, collections[rest], base)
        one = _ONE.match(rest)
        if one is None or one["set"] != "systemusers":
            return error(404, "0x80060888", f"Resource not found for the segment '{rest.split('(')[0]}'.")
        user_id = one["id"].lower()
        user = org.users.get(user_id)
        if user is None:
            return error(404, "0x80040217", f"systemuser With Id = {user_id} Does Not Exist")
        if one["nav"]:
            return self._association(org, req, user_id)
        if req.method == "GET":
            return Response(200, self._shape(org, user, req))
        if req.method == "PATCH":
            return self._patch(org, req, user)
        return error(405, "0x8006088a", f"{req.method} is not supported here")

    def _collection(self, org: Org, req: Request, name: str, records: dict, base: str) -> Response:
        matches = _filter(req.arg("$filter"))
        unknown = [f for f, _, _ in matches if f not in _PROPERTIES[name]]
        if unknown:
            raise _Refused(error(400, "0x80060888", f"Could not find a property named '{unknown[0]}' on type"
                                                    f" 'Microsoft.Dynamics.CRM.{_KEYS[name][:-2]}'."))
        rows = [r for r in records.values() if all(_matches(r, f, op, v) for f, op, v in matches)]
        prefer = re.search(r"odata\.maxpagesize=(\d+)", req.headers.get("Prefer") or "")
        size = min(int(prefer[1]), MAX_PAGE) if prefer else MAX_PAGE
        skip = int(req.arg("$skiptoken", "0"))
        page = rows[skip:skip + size]
        body: dict[str, Any] = {"@odata.context": f"{base}/$metadata#{name}",
                                "value": [self._shape(org, r, req, name) for r in page]}
        headers = {"Preference-Applied": f"odata.maxpagesize={size}"} if prefer else {}
        if skip + size < len(rows):
            query = "&".join(f"{k}={quote(v, safe='(),=$')}" for k, v in
                             [(k, req.arg(k)) for k in ("$select", "$filter", "$expand")] if v)
            body["@odata.nextLink"] = f"{base}/{name}?{query}&$skiptoken={skip + size}"
        return Response(200, body, {**headers, "OData-Version": "4.0"})

    def _shape(self, org: Org, record: dict, req: Request, entity_set: str = "systemusers") -> dict:
        select = req.arg("$select")
        fields = [f.strip() for f in select.split(",")] if select else sorted(_PROPERTIES[entity_set])
        key = _KEYS[entity_set]
        out = {"@odata.etag": record.get("@odata.etag")}
        for name in fields:
            if name not in _PROPERTIES[entity_set]:
                raise _Refused(error(400, "0x80060888", f"Could not find a property named '{name}' on type"
                                                        f" 'Microsoft.Dynamics.CRM.{key[:-2]}'."))
            out[name] = record.get(name)
        out[key] = record.get(key)
        expand = req.arg("$expand") or ""
        if expand.startswith("systemuserroles_association"):
            out["systemuserroles_association"] = [
                {"@odata.etag": org.roles[r]["@odata.etag"], "roleid": r}
                for r in sorted(org.user_roles.get(record.get("systemuserid"), ())) if r in org.roles]
        return out

    def _patch(self, org: Org, req: Request, user: dict) -> Response:
        pending = org.races.get(user["systemuserid"])
        if pending:
            org.edit_user(user["systemuserid"], **pending.pop(0))
        match = req.headers.get("If-Match")
        if match and match != "*" and match != user["@odata.etag"]:
            return error(412, "0x80060882", "The version of the existing record doesn't match the RowVersion"
                                            " property provided.")
        changes = req.json()
        if not isinstance(changes, dict):
            return error(400, "0x80048d19", "The request body is not a JSON object.")
        refused = sorted(set(changes) - WRITABLE)
        if refused:
            return error(400, "0x80048d19", f"Field '{refused[0]}' is read-only on systemuser and cannot be set"
                                            " through the Web API.")
        user.update(changes)
        self.stamp(user)
        if "return=representation" in (req.headers.get("Prefer") or ""):
            return Response(200, self._shape(org, user, req), {"Preference-Applied": "return=representation"})
        return Response(204, None, {"OData-EntityId": f"{req.base_url}/{org.name}/{API}/systemusers"
                                                      f"({user['systemuserid']})"})

    def _association(self, org: Org, req: Request, user_id: str) -> Response:
        if req.method == "POST":
            ref = (req.json() or {}).get("@odata.id", "")
        elif req.method == "DELETE":
            ref = req.arg("$id", "")
        else:
            return error(405, "0x8006088a", f"{req.method} is not supported on $ref")
        role = re.search(r"/roles\(([0-9a-fA-F-]{36})\)$", ref or "")
        if role is None or role[1].lower() not in org.roles:
            return error(404, "0x80040217", f"role With Id = {role[1] if role else ref} Does Not Exist")
        held = org.user_roles.setdefault(user_id, set())
        role_id = role[1].lower()
        if req.method == "POST":
            if role_id in held:
                return error(400, "0x80040237", "Cannot insert duplicate key.")
            held.add(role_id)
        else:
            held.discard(role_id)
        return Response(204)


class _Refused(Exception):
    def __init__(self, response: Response):
        super().__init__(response.status)
        self.response = response


def _filter(text: str | None) -> list[tuple[str, str, Any]]:
    """``a eq 'x' and b ne 4`` → [(field, op, value)]; anything else → 400, as Dataverse refuses it."""
    if not text:
        return []
    clauses, pos = [], 0
    while True:
        m = _CLAUSE.match(text, pos)
        if m is None:
            raise _Refused(error(400, "0x80060888", f"Syntax error at position {pos} in '{text}'."))
        raw = m["value"]
        value: Any = (raw[1:-1].replace("''", "'") if raw.startswith("'") else
                      {"true": True, "false": False, "null": None}.get(raw, raw))
        if isinstance(value, str) and re.fullmatch(r"-?\d+", raw):
            value = int(raw)
        clauses.append((m["field"], m["op"], value))
        pos = m.end()
        if pos == len(text):
            return clauses
        if not text.startswith("and ", pos):
            raise _Refused(error(400, "0x80060888", f"Syntax error at position {pos} in '{text}'."))
        pos += 4


def _matches(record: dict, name: str, op: str, value: Any) -> bool:
    actual = record.get(name)
    if isinstance(actual, str) and isinstance(value, str):
        actual, value = actual.lower(), value.lower()  # Dataverse compares text case-insensitively
    return (actual == value) == (op == "eq")


class DataverseSandbox:
    """The token endpoint and the Web API on one loopback server: ``start()`` → ``.url``; ``stop()``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, verbose: bool = False):
        self.issuer = TokenIssuer()
        self.api = DataverseApi(self.issuer)
        self.server = MicrosoftSandbox([self.issuer, self.api], host, port, verbose)

    @property
    def url(self) -> str:
        return self.server.url

    def connection(self, tenant: str, client_id: str, secret: str, **extra) -> str:
        """The JSON of an Airflow connection (``AIRFLOW_CONN_…``) signing in to ``tenant`` here."""
        import json

        return json.dumps({"conn_type": "panelflow_dynamics", "login": client_id, "password": secret,
                           "extra": {"tenant_id": tenant, "authority": self.url, "timeout": 5, "retries": 4,
                                     "backoff": 0.01, "max_retry_wait": 30, **extra}})

    def org_url(self, org: str) -> str:
        return f"{self.server.url}/{org}"

    def start(self) -> "DataverseSandbox":
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop()


def demo(org: Org, users: int) -> None:
    """A root business unit with a child, two roles in each, and ``users`` users (the last one disabled)."""
    root = org.add_business_unit(org.display_name)
    sales = org.add_business_unit("Sales", root)
    roles = {bu: (org.add_role("Salesperson", bu), org.add_role("System Administrator", bu)) for bu in (root, sales)}
    for n in range(1, users + 1):
        bu = sales if n % 2 else root
        org.add_user(f"user{n:02d}@{org.name}.example", f"First{n:02d}", f"Last{n:02d}", bu,
                     roles=(roles[bu][0],), isdisabled=n == users)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="dataverse.py", description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8768)
    p.add_argument("--org", default="demo")
    p.add_argument("--tenant", default="demo-tenant")
    p.add_argument("--client-id", default="panelflow-crm")
    p.add_argument("--users", type=int, default=25)
    p.add_argument("--verbose", action="store_true")
    a = p.parse_args(argv)
    sandbox = DataverseSandbox(a.host, a.port, a.verbose)
    sandbox.issuer.register(a.tenant, a.client_id,
                            os.environ.get("PANELFLOW_SANDBOX_DATAVERSE_SECRET", "dataverse-sandbox-secret"))
    demo(sandbox.api.add_org(a.org, a.tenant, stable_ids=True), a.users)
    sandbox.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(f"dataverse sandbox on {sandbox.url}; organisation URL {sandbox.org_url(a.org)}", flush=True)
    stop.wait()
    sandbox.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
