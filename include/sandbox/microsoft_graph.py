"""Microsoft Graph v1.0, as much of it as Office365SyncWork and O365SyncAdminLogsWork read.

Plugs into ``microsoft.py`` (one loopback server for the Microsoft side): every request carries
a bearer token from that server's ``TokenIssuer`` (``POST /{tenant}/oauth2/v2.0/token``), and
the token's tenant chooses whose directory is answered. Stdlib only.

Tenants are generated, deterministic for a given ``seed``: tenant ``i`` has the id
``tenant_id(i)``, an app registered for it (``credentials(i)`` → tenant id, client id,
secret), ``users_per_tenant`` users, ``groups_per_tenant`` groups with members,
``contacts_per_tenant`` organisational contacts, two domains, three subscribed SKUs, two
policies and one directory audit entry every ``audit_every_minutes`` minutes of any time asked for.

Endpoints (JSON bodies, the shapes Graph v1.0 uses)::

    GET /v1.0/organization                         {"value": [organization]}
    GET /v1.0/domains                              {"value": [domain, …]}
    GET /v1.0/subscribedSkus                       {"value": [subscribedSku, …]}
    GET /v1.0/policies/authorizationPolicy         authorizationPolicy
    GET /v1.0/policies/identitySecurityDefaultsEnforcementPolicy
    GET /v1.0/users            $select, $top (≤ 999 and ≤ page_size), @odata.nextLink
    GET /v1.0/users/delta      $select; Prefer: odata.maxpagesize=N; nextLink … deltaLink;
                               a later round from the deltaLink: changed users (id + the changed
                               properties only, as Graph does), removed ones as
                               {"id", "@removed": {"reason": "deleted"}}
    GET /v1.0/users/{id}/mailboxSettings           404 MailboxNotEnabledForRESTAPI without ``mail``
    GET /v1.0/groups           $select, $top
    GET /v1.0/groups/delta     as users; with ``members`` selected each group carries
                               ``members@delta`` (a later round: added members, removed ones
                               with ``@removed``)
    GET /v1.0/contacts         organisational contacts: $select, $top, nextLink
    GET /v1.0/auditLogs/directoryAudits
                               $filter=activityDateTime ge <iso> and activityDateTime lt <iso>
                               (ge/gt/le/lt), $top; newest first, nextLink

Writes (Office365Work's group actions; Graph's shapes and errors)::

    GET    /v1.0/users/{id | userPrincipalName}    user · 404 Request_ResourceNotFound
    POST   /v1.0/users                             {accountEnabled, displayName, mailNickname,
                               userPrincipalName, passwordProfile, usageLocation?, …} → 201 user;
                               400 "Another object with the same value for property
                               userPrincipalName already exists." · an unverified domain: 400
    PATCH  /v1.0/users/{id}                        passwordProfile and a few properties → 204
    DELETE /v1.0/users/{id}                        204 · 404
    POST   /v1.0/users/{id}/assignLicense          {addLicenses: [{skuId, disabledPlans}], removeLicenses:
                               [skuId]} → 200 user; 400 for an unknown SKU or no usageLocation
    POST   /v1.0/groups/{id}/members/$ref          {"@odata.id": ".../directoryObjects/{id}"} → 204;
                               400 "One or more added object references already exist …"
    DELETE /v1.0/groups/{id}/members/{member}/$ref 204 · 404

``lose_next_answer(method, path, status=504)``: the next such write is applied and then answered
``status`` (a lost answer); ``writes`` lists (tenant, method, path, status) of every write;
``password_of(tenant, user)`` is the passwordProfile last set.

Errors look like Graph's: ``{"error": {"code", "message"}}``; 401 for a missing, expired or
revoked token; 410 ``syncStateNotFound`` for a deltaLink older than ``invalidate_delta()``.

In-process controls (tests and the benchmark drive the state while the hooks talk HTTP):

- ``add_user`` / ``update_user`` / ``remove_user``, ``add_group`` / ``update_group`` /
  ``remove_group``, ``add_member`` / ``remove_member``: changes the next delta round returns;
- ``throttle(n, status=429, retry_after="1")``: the next ``n`` Graph requests get that status
  (``retry_after=None``: no Retry-After header — a 503 as Graph sends it under load);
- ``malform_next(kind="truncated" | "bad_item" | "no_value", path=…, skip=0, tenant=…)``: the
  next page (of ``path`` and ``tenant``, if given; after ``skip`` intact ones) is cut in half /
  has one item without an ``id`` / has no ``value`` list;
- ``latency``: seconds every Graph request takes (a remote API's round trip; default 0);
- ``after_requests(n, fn)``: run ``fn`` once ``n`` more Graph requests have been served
  (``issuer.expire_all`` there: a token expiring mid-sync); ``issuer.fail_tenant(t)``: logins fail;
- ``invalidate_delta(tenant)``: that tenant's deltaLinks answer 410 (a full resync is needed);
- ``served`` (Counter of ``(tenant, path)``), ``statuses`` (Counter of status codes), ``pages``
  (pages served with data) and ``max_in_flight`` (most Graph requests at once): what was asked for.

Command line (through ``microsoft.py``): ``--graph-tenants``, ``--graph-users``,
``--graph-groups``, ``--graph-contacts``, ``--graph-members``, ``--graph-page-size``,
``--graph-seed``, ``--graph-latency``.
``python -m sandbox.microsoft_graph --url http://127.0.0.1:8767 [same options]`` prints
the Airflow connections (``AIRFLOW_CONN_M365_TENANT_<i>``) and the ``m365_tenants`` rows that
wire those tenants into panelflow.
"""

from __future__ import annotations

import base64
import bisect
import json
import re
import sys
import threading
import time
import uuid
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote

_HERE = Path(__file__).resolve().parent


def _sandbox():
    """``microsoft.py``'s Request/Response (one module, also when it runs as ``python -m``)."""
    from sandbox import microsoft

    return microsoft


_ms = _sandbox()
Request, Response = _ms.Request, _ms.Response

NS = uuid.UUID("5b0e3c2a-7d1f-4f6e-9a51-0c4b8f1d2e37")
MAX_TOP = 999
AUDIT_EPOCH = datetime(2020, 1, 1, tzinfo=timezone.utc)

# Real SKU ids and part numbers, with a few of their service plans.
SKUS = [
    ("6fd2c87f-b296-42f0-b197-1e91e994b900", "ENTERPRISEPACK",
     [("efb87545-963c-4e0d-99df-69c6916d9eb0", "EXCHANGE_S_ENTERPRISE"),
      ("5dbe027f-2339-4123-9542-606e4d348a72", "SHAREPOINTENTERPRISE"),
      ("57ff2da0-773e-42df-b2af-ffb7a2317929", "TEAMS1")]),
    ("f245ecc8-75af-4f8e-b61f-27d8114de5b3", "O365_BUSINESS_PREMIUM",
     [("9aaf7827-d63c-4b61-89c3-182f06f82e5c", "EXCHANGE_S_STANDARD"),
      ("57ff2da0-773e-42df-b2af-ffb7a2317929", "TEAMS1")]),
    ("4b9405b0-7788-4568-add1-99614e613b69", "EXCHANGESTANDARD",
     [("9aaf7827-d63c-4b61-89c3-182f06f82e5c", "EXCHANGE_S_STANDARD")]),
]
ACTIVITIES = [("Update user", "UserManagement", "Update"), ("Add member to group", "GroupManagement", "Assign"),
              ("Reset user password", "UserManagement", "Update"), ("Add user", "UserManagement", "Add"),
              ("Change user license", "UserManagement", "Update")]


def _uid(*parts: Any) -> str:
    return str(uuid.uuid5(NS, "/".join(map(str, parts))))


def _b64(obj: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj, separators=(",", ":")).encode()).decode().rstrip("=")


def _unb64(token: str) -> dict:
    return json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))


def _iso(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(timezone.utc)


def _error(status: int, code: str, message: str, headers: dict | None = None) -> Response:
    return Response(status, {"error": {"code": code, "message": message,
                                       "innerError": {"request-id": str(uuid.uuid4())}}}, headers or {})


class _Collection:
    """Directory objects with a change log: what changed (per property) or went after a sequence number."""

    def __init__(self):
        self.items: dict[str, dict] = {}
        self.changed: dict[str, dict[str, int]] = {}   # id → {property: seq}
        self.removed: dict[str, int] = {}              # id → seq
        self.members: dict[str, dict[str, tuple[str, int]]] = {}    # group id → {member id: (type, seq)}
        self.gone_members: dict[str, dict[str, tuple[str, int]]] = {}
        self._sorted: list[str] | None = None

    def ids(self) -> list[str]:
        if self._sorted is None:
            self._sorted = sorted(self.items)
        return self._sorted

    def put(self, oid: str, fields: dict, seq: int) -> None:
        if oid not in self.items:
            self._sorted = None
            self.items[oid] = {"id": oid}
        self.items[oid].update(fields)
        log = self.changed.setdefault(oid, {})
        for k in fields:
            log[k] = seq
        self.removed.pop(oid, None)

    def drop(self, oid: str, seq: int) -> None:
        if self.items.pop(oid, None) is not None:
            self._sorted = None
        self.changed.pop(oid, None)
        self.members.pop(oid, None)
        self.gone_members.pop(oid, None)
        self.removed[oid] = seq

    def touched_since(self, since: int) -> list[str]:
        out = {oid for oid, log in self.changed.items() if max(log.values(), default=0) > since}
        out |= {oid for oid, s in self.removed.items() if s > since}
        out |= {g for g, m in self.members.items() if any(s > since for _, s in m.values())}
        out |= {g for g, m in self.gone_members.items() if any(s > since for _, s in m.values())}
        return sorted(out)


class _Tenant:
    def __init__(self, index: int, tenant_id: str, domain: str):
        self.index, self.id, self.domain = index, tenant_id, domain
        self.seq = 1                  # change sequence; generated data is seq 1
        self.epoch = 0                # bumped by invalidate_delta
        self.users = _Collection()
        self.groups = _Collection()
        self.contacts: dict[str, dict] = {}
        self.extra_audits: list[dict] = []
        self.passwords: dict[str, dict] = {}  # user id → passwordProfile last set (never returned)
        self.lock = threading.RLock()


class GraphApi:
    """The Graph v1.0 endpoints above for generated tenants; ``handle(request)`` for ``MicrosoftSandbox``."""

    def __init__(self, issuer, tenants: int = 2, users_per_tenant: int = 50, groups_per_tenant: int = 10,
                 contacts_per_tenant: int = 5, members_per_group: int = 5, page_size: int = 100,
                 audit_every_minutes: int = 7, seed: int = 0, latency: float = 0.0):
        self.issuer = issuer
        self.latency = latency               # seconds each Graph request takes (a remote API's round trip)
        self.page_size = max(1, int(page_size))
        self.audit_every = timedelta(minutes=max(1, int(audit_every_minutes)))
        self.seed = seed
        self.served: Counter = Counter()
        self.statuses: Counter = Counter()
        self.pages = 0
        self.in_flight = self.max_in_flight = 0
        self._lock = threading.Lock()
        self._throttles: list[tuple[int, str | None]] = []
        self._malform: list[list] = []          # [kind, path, pages to let through first, tenant]
        self._scheduled: list[list] = []      # [requests left, fn]
        self._lost: list[tuple] = []          # [(method, path part, status)]: answers lost after the write
        self.writes: list[tuple] = []         # (tenant, method, path, status) of every write request
        self.tenants: dict[str, _Tenant] = {}
        self._order: list[str] = []
        for i in range(tenants):
            self._generate(i, users_per_tenant, groups_per_tenant, contacts_per_tenant, members_per_group)

    # -- generated data -------------------------------------------------------------------------

    def tenant_id(self, i: int) -> str:
        return _uid("tenant", self.seed, i)

    def credentials(self, i: int) -> tuple[str, str, str]:
        """(tenant id, client id, client secret) of the app registered in tenant ``i``."""
        t = self.tenant_id(i)
        return t, _uid("app", self.seed, i), f"sandbox-secret-{self.seed}-{i}"

    def connection(self, i: int, url: str, **extra) -> dict:
        """The Airflow connection (``msgraph`` type) for tenant ``i`` of a sandbox at ``url``."""
        tenant, client_id, secret = self.credentials(i)
        host = url.split("://", 1)[1].split(":")[0].split("/")[0]
        return {"conn_type": "msgraph", "login": client_id, "password": secret,
                "extra": {"tenant_id": tenant, "authority": url, "base_url": f"{url}/v1.0",
                          "allowed_hosts": host, **extra}}

    def _generate(self, i: int, n_users: int, n_groups: int, n_contacts: int, per_group: int) -> None:
        tid, client_id, secret = self.credentials(i)
        self.issuer.register(tid, client_id, secret)
        t = _Tenant(i, tid, f"tenant{i}.example")
        self.tenants[tid] = t
        self._order.append(tid)
        created = _iso(datetime(2024, 1, 1, tzinfo=timezone.utc) + timedelta(days=i))
        user_ids = []
        for u in range(n_users):
            uid = _uid("user", self.seed, i, u)
            user_ids.append(uid)
            t.users.items[uid] = self._user_fields(t, u, uid, created)
            t.users.changed[uid] = {}
        for g in range(n_groups):
            gid = _uid("group", self.seed, i, g)
            t.groups.items[gid] = self._group_fields(t, g, gid, created)
            t.groups.changed[gid] = {}
            members = {}
            if user_ids:
                for k in range(per_group):
                    members[user_ids[(g * 7 + k * 13) % len(user_ids)]] = ("user", 1)
            if g % 10 == 1:
                members[_uid("group", self.seed, i, g - 1)] = ("group", 1)
            t.groups.members[gid] = members
        for c in range(n_contacts):
            cid = _uid("contact", self.seed, i, c)
            t.contacts[cid] = {"id": cid, "displayName": f"Partner contact {c}", "givenName": "Partner",
                               "surname": f"Contact {c}", "mail": f"contact{c}@partner{i}.example",
                               "companyName": f"Partner {c % 3} Ltd",
                               "proxyAddresses": [f"SMTP:contact{c}@partner{i}.example"]}

    @staticmethod
    def _user_fields(t: _Tenant, u: int, uid: str, created: str) -> dict:
        upn = f"user{u:06d}@{t.domain}"
        has_mail = u % 10 != 9
        licences = []
        if has_mail:
            licences.append({"skuId": SKUS[u % 2][0], "disabledPlans": []})
            if u % 5 == 0:
                licences.append({"skuId": SKUS[2][0], "disabledPlans": [SKUS[2][2][0][0]] if u % 15 == 0 else []})
        return {"id": uid, "userPrincipalName": upn, "displayName": f"User {u}", "givenName": "User",
                "surname": str(u), "mail": upn if has_mail else None, "accountEnabled": u % 50 != 7,
                "usageLocation": "GB", "jobTitle": ("Engineer", "Sales", None)[u % 3],
                "department": ("Operations", "Sales", "Support", None)[u % 4],
                "proxyAddresses": [f"SMTP:{upn}", f"smtp:u{u}@{t.domain}"] if has_mail else [],
                "assignedLicenses": licences, "createdDateTime": created}

    @staticmethod
    def _group_fields(t: _Tenant, g: int, gid: str, created: str) -> dict:
        unified = g % 2 == 0
        return {"id": gid, "displayName": f"Group {g}", "description": f"Generated group {g}",
                "mail": f"group{g}@{t.domain}" if unified else None, "mailEnabled": unified,
                "mailNickname": f"group{g}", "securityEnabled": not unified,
                "groupTypes": ["Unified"] if unified else [], "visibility": "Private" if unified else None,
                "proxyAddresses": [f"SMTP:group{g}@{t.domain}"] if unified else [], "createdDateTime": created}

    def _tenant(self, tenant: str | int) -> _Tenant:
        return self.tenants[self._order[tenant]] if isinstance(tenant, int) else self.tenants[tenant]

    def user_ids(self, tenant: str | int) -> list[str]:
        return list(self._tenant(tenant).users.ids())

    def group_ids(self, tenant: str | int) -> list[str]:
        return list(self._tenant(tenant).groups.ids())

    def user(self, tenant: str | int, user_id: str) -> dict:
        return dict(self._tenant(tenant).users.items[user_id])

    def members(self, tenant: str | int, group_id: str) -> dict[str, str]:
        return {m: typ for m, (typ, _) in self._tenant(tenant).groups.members.get(group_id, {}).items()}

    # -- in-process controls --------------------------------------------------------------------

    def _bump(self, t: _Tenant) -> int:
        t.seq += 1
        return t.seq

    def add_user(self, tenant, user_id: str | None = None, **fields) -> str:
        t = self._tenant(tenant)
        with t.lock:
            uid = user_id or str(uuid.uuid4())
            n = len(t.users.items)
            base = self._user_fields(t, 500_000 + n, uid, _iso(datetime.now(timezone.utc)))
            base.update(fields)
            base.pop("id", None)
            t.users.put(uid, base, self._bump(t))
            return uid

    def update_user(self, tenant, user_id: str, **fields) -> None:
        t = self._tenant(tenant)
        with t.lock:
            if user_id not in t.users.items:
                raise KeyError(user_id)
            t.users.put(user_id, fields, self._bump(t))

    def remove_user(self, tenant, user_id: str) -> None:
        t = self._tenant(tenant)
        with t.lock:
            seq = self._bump(t)
            t.users.drop(user_id, seq)
            for gid, members in t.groups.members.items():
                if user_id in members:
                    typ, _ = members.pop(user_id)
                    t.groups.gone_members.setdefault(gid, {})[user_id] = (typ, seq)

    def add_group(self, tenant, group_id: str | None = None, members: dict[str, str] | None = None, **fields) -> str:
        t = self._tenant(tenant)
        with t.lock:
            gid = group_id or str(uuid.uuid4())
            base = self._group_fields(t, 500_000 + len(t.groups.items), gid, _iso(datetime.now(timezone.utc)))
            base.update(fields)
            base.pop("id", None)
            seq = self._bump(t)
            t.groups.put(gid, base, seq)
            t.groups.members[gid] = {m: (typ, seq) for m, typ in (members or {}).items()}
            return gid

    def update_group(self, tenant, group_id: str, **fields) -> None:
        t = self._tenant(tenant)
        with t.lock:
            t.groups.put(group_id, fields, self._bump(t))

    def remove_group(self, tenant, group_id: str) -> None:
        t = self._tenant(tenant)
        with t.lock:
            seq = self._bump(t)
            t.groups.drop(group_id, seq)
            for gid, members in t.groups.members.items():    # it leaves the groups it was a member of
                if group_id in members:
                    typ, _ = members.pop(group_id)
                    t.groups.gone_members.setdefault(gid, {})[group_id] = (typ, seq)

    def add_member(self, tenant, group_id: str, member_id: str, member_type: str = "user") -> None:
        t = self._tenant(tenant)
        with t.lock:
            seq = self._bump(t)
            t.groups.members.setdefault(group_id, {})[member_id] = (member_type, seq)
            t.groups.gone_members.get(group_id, {}).pop(member_id, None)

    def remove_member(self, tenant, group_id: str, member_id: str) -> None:
        t = self._tenant(tenant)
        with t.lock:
            seq = self._bump(t)
            typ, _ = t.groups.members[group_id].pop(member_id)
            t.groups.gone_members.setdefault(group_id, {})[member_id] = (typ, seq)

    def add_contact(self, tenant, **fields) -> str:
        t = self._tenant(tenant)
        cid = fields.pop("id", None) or str(uuid.uuid4())
        t.contacts[cid] = {"id": cid, **fields}
        return cid

    def remove_contact(self, tenant, contact_id: str) -> None:
        self._tenant(tenant).contacts.pop(contact_id)

    def add_audit(self, tenant, when: datetime, activity: str = "Update user", **fields) -> str:
        t = self._tenant(tenant)
        aid = fields.pop("id", None) or str(uuid.uuid4())
        entry = self._audit(t, aid, when, (activity, "UserManagement", "Update"), 0)
        entry.update(fields)
        t.extra_audits.append(entry)
        return aid

    def invalidate_delta(self, tenant) -> None:
        t = self._tenant(tenant)
        with t.lock:
            t.epoch += 1

    def throttle(self, n: int, status: int = 429, retry_after: str | None = "1") -> None:
        with self._lock:
            self._throttles.extend([(status, retry_after)] * n)

    def malform_next(self, kind: str = "truncated", path: str | None = None, skip: int = 0, tenant=None) -> None:
        """Malform the next page (of ``path``, of ``tenant``) after ``skip`` more such pages are served intact."""
        if kind not in ("truncated", "bad_item", "no_value"):
            raise ValueError(kind)
        with self._lock:
            self._malform.append([kind, path, skip, None if tenant is None else self._tenant(tenant).id])

    def lose_next_answer(self, method: str = "POST", path: str | None = None, status: int = 504) -> None:
        """The next ``method`` request (whose path contains ``path``) is applied, then answered ``status``
        (an answer lost on the way back: a gateway timeout after Graph did the work)."""
        with self._lock:
            self._lost.append((method, path, status))

    def password_of(self, tenant, user_id: str) -> dict | None:
        """The passwordProfile last set for a user (Graph never returns it; for tests)."""
        return self._tenant(tenant).passwords.get(user_id)

    def after_requests(self, n: int, fn: Callable[[], Any]) -> None:
        with self._lock:
            self._scheduled.append([n, fn])

    # -- HTTP -----------------------------------------------------------------------------------

    def handle(self, req: Request) -> Response | None:
        if not req.path.startswith("/v1.0/"):
            return None
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.latency:
                time.sleep(self.latency)
            resp = self._serve(req)
        finally:
            with self._lock:
                self.in_flight -= 1
        with self._lock:
            self.statuses[resp.status] += 1
            due = []
            for item in self._scheduled:
                item[0] -= 1
                if item[0] <= 0:
                    due.append(item)
            for item in due:
                self._scheduled.remove(item)
        for _, fn in due:
            fn()
        return resp

    def _serve(self, req: Request) -> Response:
        who = self.issuer.authorise(req)
        if not isinstance(who, str):      # the issuer's 401 Response
            return who
        t = self.tenants.get(who)
        if t is None:
            return _error(403, "Authorization_RequestDenied", f"tenant {who} has no directory here")
        path = req.path[len("/v1.0"):].rstrip("/")
        with self._lock:
            self.served[(t.id, path)] += 1
            throttle = self._throttles.pop(0) if self._throttles else None
        if throttle is not None:
            status, retry_after = throttle
            headers = {"Retry-After": retry_after} if retry_after is not None else {}
            code = "TooManyRequests" if status == 429 else "ServiceUnavailable"
            return _error(status, code, "Too many requests, retry later.", headers)
        if req.method != "GET" or (path != "/users/delta" and re.fullmatch(r"/users/[^/]+", path)):
            return self._write(req, t, path)
        route = {
            "/organization": self._organization, "/domains": self._domains, "/subscribedSkus": self._skus,
            "/users": self._users, "/users/delta": self._users_delta, "/groups": self._groups,
            "/groups/delta": self._groups_delta, "/contacts": self._contacts,
            "/auditLogs/directoryAudits": self._audits,
            "/policies/authorizationPolicy": self._authorization_policy,
            "/policies/identitySecurityDefaultsEnforcementPolicy": self._security_defaults,
        }.get(path)
        m = re.fullmatch(r"/users/([^/]+)/mailboxSettings", path)
        try:
            with t.lock:
                if route is not None:
                    resp = route(req, t)
                elif m:
                    resp = self._mailbox_settings(req, t, m.group(1))
                else:
                    resp = _error(400, "Request_UnsupportedQuery", f"Resource not found for the segment '{path}'.")
        except _BadRequest as exc:
            resp = _error(400, "Request_BadRequest", str(exc))
        if resp.status == 200 and isinstance(resp.body, dict) and "value" in resp.body:
            resp = self._maybe_malform(req, resp, t.id)
        return resp

    def _maybe_malform(self, req: Request, resp: Response, tenant: str) -> Response:
        with self._lock:
            self.pages += 1
            hit = next((m for m in self._malform if (m[1] is None or m[1] in req.path)
                        and m[3] in (None, tenant)), None)
            if hit is None:
                return resp
            if hit[2] > 0:
                hit[2] -= 1
                return resp
            self._malform.remove(hit)
        kind = hit[0]
        body = resp.body
        if kind == "truncated":
            raw = json.dumps(body).encode()
            return Response(200, raw[: len(raw) // 2], {"Content-Type": "application/json"})
        if kind == "no_value":
            body = {k: v for k, v in body.items() if k != "value"}
            body["values"] = "oops"
            return Response(200, body)
        items = [dict(x) for x in body["value"]]
        if items:
            items[len(items) // 2].pop("id", None)
        else:
            items = [{"displayName": "no id"}]
        return Response(200, {**body, "value": items})

    # -- paging helpers -------------------------------------------------------------------------

    @staticmethod
    def _select(req: Request) -> list[str] | None:
        sel = req.arg("$select")
        return [s.strip() for s in sel.split(",") if s.strip()] if sel else None

    def _top(self, req: Request, default: int | None = None) -> int:
        top = req.arg("$top")
        prefer = req.headers.get("Prefer") or ""
        m = re.search(r"odata\.maxpagesize=(\d+)", prefer)
        try:
            n = int(top) if top else (int(m.group(1)) if m else (default or self.page_size))
        except ValueError:
            raise _BadRequest(f"Invalid $top value '{top}'.") from None
        if n < 1:
            raise _BadRequest("$top must be positive.")
        return min(n, self.page_size, MAX_TOP)   # like Graph, the server may send fewer than asked

    @staticmethod
    def _project(obj: dict, select: list[str] | None, only: set[str] | None = None) -> dict:
        keys = select if select is not None else [k for k in obj if k != "id"]
        if only is not None:
            keys = [k for k in keys if k in only]
        out = {"id": obj["id"]}
        for k in keys:
            if k != "id" and k != "members" and k in obj:
                out[k] = obj[k]
        return out

    def _list(self, req: Request, t: _Tenant, name: str, ids: list[str], get: Callable[[str], dict],
              context: str) -> Response:
        skip = req.arg("$skiptoken")
        state = _unb64(skip) if skip else {"after": None, "sel": req.arg("$select"), "top": self._top(req)}
        select = [s for s in (state["sel"] or "").split(",") if s] or None
        start = 0 if state["after"] is None else bisect.bisect_right(ids, state["after"])
        chunk = ids[start:start + state["top"]]
        body = {"@odata.context": f"https://graph.microsoft.com/v1.0/$metadata#{context}",
                "value": [self._project(get(i), select) for i in chunk]}
        if start + len(chunk) < len(ids):
            token = _b64({**state, "after": chunk[-1]})
            body["@odata.nextLink"] = f"{req.base_url}/v1.0/{name}?$skiptoken={token}"
        return Response(200, body)

    def _delta(self, req: Request, t: _Tenant, coll: _Collection, name: str, members: bool) -> Response:
        skip, dtoken = req.arg("$skiptoken"), req.arg("$deltatoken")
        if skip:
            state = _unb64(skip)
        elif dtoken:
            d = _unb64(dtoken)
            state = {"since": d["s"], "snap": t.seq, "after": None, "sel": d["sel"], "e": d["e"],
                     "top": self._top(req)}
        else:
            state = {"since": 0, "snap": t.seq, "after": None, "sel": req.arg("$select"), "e": t.epoch,
                     "top": self._top(req)}
        if state["e"] != t.epoch:
            return _error(410, "syncStateNotFound", "The delta token is no longer valid; start a new round.")
        select = [s for s in (state["sel"] or "").split(",") if s] or None
        with_members = members and (select is None or "members" in select)
        since = state["since"]
        ids = coll.ids() if since == 0 else coll.touched_since(since)
        start = 0 if state["after"] is None else bisect.bisect_right(ids, state["after"])
        chunk = ids[start:start + state["top"]]
        out = []
        for oid in chunk:
            if oid not in coll.items:
                if coll.removed.get(oid, 0) > since:
                    out.append({"id": oid, "@removed": {"reason": "deleted"}})
                continue
            if since == 0:
                item = self._project(coll.items[oid], select)
            else:
                log = coll.changed.get(oid, {})
                item = self._project(coll.items[oid], select, {k for k, s in log.items() if s > since})
            if with_members:
                md = [{"@odata.type": f"#microsoft.graph.{typ}", "id": m}
                      for m, (typ, s) in coll.members.get(oid, {}).items() if s > since or since == 0]
                if since:
                    md += [{"@odata.type": f"#microsoft.graph.{typ}", "id": m, "@removed": {"reason": "deleted"}}
                           for m, (typ, s) in coll.gone_members.get(oid, {}).items() if s > since]
                if md or since == 0:
                    item["members@delta"] = md
            out.append(item)
        body = {"@odata.context": f"https://graph.microsoft.com/v1.0/$metadata#{name}(…)", "value": out}
        if start + len(chunk) < len(ids):
            body["@odata.nextLink"] = f"{req.base_url}/v1.0/{name}/delta?$skiptoken={_b64({**state, 'after': chunk[-1]})}"
        else:
            body["@odata.deltaLink"] = (f"{req.base_url}/v1.0/{name}/delta?$deltatoken="
                                        f"{_b64({'s': state['snap'], 'sel': state['sel'], 'e': state['e']})}")
        return Response(200, body)

    # -- resources ------------------------------------------------------------------------------

    def _organization(self, req, t):
        return Response(200, {"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#organization", "value": [{
            "id": t.id, "displayName": f"Tenant {t.index} Ltd", "tenantType": "AAD", "countryLetterCode": "GB",
            "preferredLanguage": "en", "createdDateTime": _iso(datetime(2024, 1, 1, tzinfo=timezone.utc)
                                                            + timedelta(days=t.index)),
            "verifiedDomains": [{"name": d["id"], "isDefault": d["isDefault"], "isInitial": d["isInitial"],
                                 "type": "Managed", "capabilities": "Email, OfficeCommunicationsOnline"}
                                for d in self._domain_list(t)]}]})

    @staticmethod
    def _domain_list(t):
        return [{"id": t.domain, "authenticationType": "Managed", "isAdminManaged": True, "isDefault": True,
                 "isInitial": False, "isRoot": True, "isVerified": True,
                 "supportedServices": ["Email", "OfficeCommunicationsOnline"]},
                {"id": f"tenant{t.index}.onmicrosoft.com", "authenticationType": "Managed", "isAdminManaged": True,
                 "isDefault": False, "isInitial": True, "isRoot": True, "isVerified": True,
                 "supportedServices": ["Email", "OfficeCommunicationsOnline"]}]

    def _domains(self, req, t):
        return Response(200, {"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#domains",
                              "value": self._domain_list(t)})

    def _skus(self, req, t):
        consumed = Counter(lic["skuId"] for u in t.users.items.values() for lic in u.get("assignedLicenses") or [])
        value = []
        for k, (sku, part, plans) in enumerate(SKUS):
            value.append({
                "id": f"{t.id}_{sku}", "skuId": sku, "skuPartNumber": part, "appliesTo": "User",
                "capabilityStatus": "Enabled", "consumedUnits": consumed[sku],
                "prepaidUnits": {"enabled": consumed[sku] + 10 * (k + 1), "suspended": 0, "warning": 0, "lockedOut": 0},
                "servicePlans": [{"servicePlanId": p, "servicePlanName": n, "provisioningStatus": "Success",
                                  "appliesTo": "User"} for p, n in plans]})
        return Response(200, {"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#subscribedSkus",
                              "value": value})

    def _authorization_policy(self, req, t):
        return Response(200, {
            "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#policies/authorizationPolicy/$entity",
            "id": "authorizationPolicy", "displayName": "Authorization Policy",
            "description": "Used to manage authorization related settings across the company.",
            "allowInvitesFrom": "everyone", "allowedToSignUpEmailBasedSubscriptions": True,
            "allowEmailVerifiedUsersToJoinOrganization": False, "blockMsolPowerShell": False,
            "defaultUserRolePermissions": {"allowedToCreateApps": True, "allowedToCreateSecurityGroups": True,
                                           "allowedToReadOtherUsers": True}})

    def _security_defaults(self, req, t):
        return Response(200, {
            "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#policies/"
                              "identitySecurityDefaultsEnforcementPolicy/$entity",
            "id": "00000000-0000-0000-0000-000000000005", "displayName": "Security Defaults",
            "description": "Security defaults is a set of basic identity security mechanisms recommended by Microsoft.",
            "isEnabled": t.index % 2 == 0})

    def _users(self, req, t):
        return self._list(req, t, "users", t.users.ids(), t.users.items.__getitem__, "users")

    def _users_delta(self, req, t):
        return self._delta(req, t, t.users, "users", members=False)

    def _groups(self, req, t):
        return self._list(req, t, "groups", t.groups.ids(), t.groups.items.__getitem__, "groups")

    def _groups_delta(self, req, t):
        return self._delta(req, t, t.groups, "groups", members=True)

    def _contacts(self, req, t):
        ids = sorted(t.contacts)
        return self._list(req, t, "contacts", ids, t.contacts.__getitem__, "contacts")

    def _mailbox_settings(self, req, t, user_id):
        u = t.users.items.get(user_id)
        if u is None:
            return _error(404, "Request_ResourceNotFound", f"Resource '{user_id}' does not exist.")
        if not u.get("mail"):
            return _error(404, "MailboxNotEnabledForRESTAPI",
                          "The mailbox is either inactive, soft-deleted, or is hosted on-premise.")
        return Response(200, {"@odata.context": f"https://graph.microsoft.com/v1.0/$metadata#users('{user_id}')"
                                                "/mailboxSettings",
                              "timeZone": "GMT Standard Time",
                              "language": {"locale": "en-GB", "displayName": "English (United Kingdom)"},
                              "userPurpose": "user", "automaticRepliesSetting": {"status": "disabled"}})

    def _audit(self, t, aid, when, activity, k) -> dict:
        name, category, op = activity
        upn = f"user{k % 1000:06d}@{t.domain}"
        return {"id": aid, "category": category, "correlationId": _uid("corr", t.id, aid), "result": "success",
                "resultReason": "", "activityDisplayName": name, "activityDateTime": _iso(when),
                "loggedByService": "Core Directory", "operationType": op,
                "initiatedBy": {"app": None, "user": {"id": _uid("admin", t.id), "displayName": None,
                                                      "userPrincipalName": f"admin@{t.domain}",
                                                      "ipAddress": "203.0.113.7"}},
                "targetResources": [{"id": _uid("user", self.seed, t.index, k % 1000), "displayName": None,
                                     "type": "User", "userPrincipalName": upn, "modifiedProperties": []}],
                "additionalDetails": [{"key": "UserType", "value": "Member"}]}

    def _audits(self, req, t):
        skip = req.arg("$skiptoken")
        if skip:
            state = _unb64(skip)
        else:
            flt = req.arg("$filter") or ""
            lo = hi = None
            clauses = re.findall(r"activityDateTime\s+(ge|gt|le|lt)\s+(\S+)", flt)
            if flt and not clauses:
                raise _BadRequest(f"Invalid filter clause: {flt}")
            for op, value in clauses:
                try:
                    v = _parse_iso(value)
                except ValueError:
                    raise _BadRequest(f"Invalid filter clause: '{value}' is not a DateTimeOffset.") from None
                if op in ("ge", "gt"):
                    v += timedelta(seconds=1) if op == "gt" else timedelta()
                    lo = v if lo is None else max(lo, v)
                else:
                    v += timedelta(seconds=1) if op == "le" else timedelta()
                    hi = v if hi is None else min(hi, v)
            hi = hi or datetime.now(timezone.utc)
            lo = max(lo or hi - timedelta(days=30), AUDIT_EPOCH)   # Graph keeps 30 days
            state = {"lo": _iso(lo), "hi": _iso(hi), "skip": 0, "top": self._top(req, 100)}
        lo, hi = _parse_iso(state["lo"]), _parse_iso(state["hi"])
        step = self.audit_every
        first = max(0, -(-int((lo - AUDIT_EPOCH).total_seconds()) // int(step.total_seconds())))
        entries = []
        k = first
        while AUDIT_EPOCH + k * step < hi:
            entries.append((AUDIT_EPOCH + k * step, k))
            k += 1
        rows = [(when, None, k) for when, k in entries]
        rows += [(_parse_iso(e["activityDateTime"]), e, None) for e in t.extra_audits
                 if lo <= _parse_iso(e["activityDateTime"]) < hi]
        rows.sort(key=lambda r: (r[0], r[1]["id"] if r[1] else _uid("audit", t.id, r[2])), reverse=True)
        chunk = rows[state["skip"]:state["skip"] + state["top"]]
        value = [e if e is not None else self._audit(t, _uid("audit", t.id, k), when, ACTIVITIES[k % len(ACTIVITIES)], k)
                 for when, e, k in chunk]
        body = {"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#auditLogs/directoryAudits", "value": value}
        if state["skip"] + len(chunk) < len(rows):
            body["@odata.nextLink"] = (f"{req.base_url}/v1.0/auditLogs/directoryAudits?$skiptoken="
                                       f"{quote(_b64({**state, 'skip': state['skip'] + len(chunk)}))}")
        return Response(200, body)


    # -- writes (Office365Work's group actions) ---------------------------------------------------

    def _write(self, req: Request, t: _Tenant, path: str) -> Response:
        from urllib.parse import unquote

        path = unquote(path)
        try:
            with t.lock:
                resp = self._apply(req, t, path)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            resp = _error(400, "Request_BadRequest", f"Invalid request body: {exc}")
        lost = None
        if resp.status < 300 and req.method != "GET":
            with self._lock:
                lost = next((x for x in self._lost if x[0] == req.method and (x[1] is None or x[1] in path)), None)
                if lost is not None:
                    self._lost.remove(lost)
        with self._lock:
            if req.method != "GET":
                self.writes.append((t.id, req.method, path, lost[2] if lost else resp.status))
        if lost is not None:
            return _error(lost[2], "GatewayTimeout", "The operation timed out (the change may have been applied).")
        return resp

    @staticmethod
    def _find_user(t: _Tenant, key: str) -> str | None:
        """A user by object id or userPrincipalName (Graph's ``/users/{id | userPrincipalName}``)."""
        if key in t.users.items:
            return key
        key = key.lower()
        return next((uid for uid, u in t.users.items.items() if (u.get("userPrincipalName") or "").lower() == key),
                    None)

    def _apply(self, req: Request, t: _Tenant, path: str) -> Response:
        m = re.fullmatch(r"/users/([^/]+)(/assignLicense)?", path)
        if path == "/users" and req.method == "POST":
            return self._create_user(req, t)
        if m:
            uid = self._find_user(t, m.group(1))
            if uid is None:
                return _error(404, "Request_ResourceNotFound", f"Resource '{m.group(1)}' does not exist or one of "
                                                                "its queried reference-property objects are not present.")
            if m.group(2) and req.method == "POST":
                return self._assign_license(req, t, uid)
            if m.group(2):
                return _error(405, "Request_BadRequest", f"{req.method} is not supported here")
            if req.method == "GET":
                return Response(200, {"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#users/$entity",
                                      **t.users.items[uid]})
            if req.method == "PATCH":
                body = req.json()
                if not isinstance(body, dict) or not body:
                    raise ValueError("a PATCH needs a JSON object")
                profile = body.pop("passwordProfile", None)
                if profile is not None:
                    if not isinstance(profile, dict) or len(str(profile.get("password") or "")) < 8:
                        return _error(400, "Request_BadRequest", "The specified password does not comply with "
                                                                 "password complexity requirements.")
                    t.passwords[uid] = dict(profile)
                bad = set(body) - {"displayName", "givenName", "surname", "jobTitle", "department", "accountEnabled",
                                   "usageLocation", "mobilePhone"}
                if bad:
                    return _error(400, "Request_BadRequest", f"Property '{sorted(bad)[0]}' is read-only here.")
                if body:
                    t.users.put(uid, body, self._bump(t))
                return Response(204)
            if req.method == "DELETE":
                self.remove_user(t.id, uid)
                t.passwords.pop(uid, None)
                return Response(204)
        g = re.fullmatch(r"/groups/([^/]+)/members(?:/([^/]+))?/\$ref", path)
        if g:
            gid = g.group(1)
            if gid not in t.groups.items:
                return _error(404, "Request_ResourceNotFound", f"Resource '{gid}' does not exist.")
            if req.method == "POST" and g.group(2) is None:
                ref = (req.json() or {}).get("@odata.id") or ""
                mid = ref.rstrip("/").rsplit("/", 1)[-1]
                if mid in t.users.items:
                    typ = "user"
                elif mid in t.groups.items:
                    typ = "group"
                else:
                    return _error(404, "Request_ResourceNotFound", f"Resource '{mid}' does not exist.")
                if mid in t.groups.members.get(gid, {}):
                    return _error(400, "Request_BadRequest", "One or more added object references already exist "
                                                             "for the following modified properties: 'members'.")
                self.add_member(t.id, gid, mid, typ)
                return Response(204)
            if req.method == "DELETE" and g.group(2):
                if g.group(2) not in t.groups.members.get(gid, {}):
                    return _error(404, "Request_ResourceNotFound", f"Resource '{g.group(2)}' does not exist.")
                self.remove_member(t.id, gid, g.group(2))
                return Response(204)
        return _error(405 if req.method != "GET" else 400, "Request_BadRequest",
                      f"{req.method} is not supported for the segment '{path}'.")

    def _create_user(self, req: Request, t: _Tenant) -> Response:
        body = req.json()
        if not isinstance(body, dict):
            raise ValueError("the body must be a JSON object")
        missing = [k for k in ("accountEnabled", "displayName", "mailNickname", "userPrincipalName", "passwordProfile")
                   if k not in body]
        if missing:
            return _error(400, "Request_BadRequest", f"Property '{missing[0]}' is required.")
        upn = str(body["userPrincipalName"])
        domain = upn.rpartition("@")[2].lower()
        if domain not in (t.domain, f"tenant{t.index}.onmicrosoft.com"):
            return _error(400, "Request_BadRequest", f"The domain portion of the userPrincipalName property is "
                                                     f"invalid. You must use one of the verified domain names.")
        if self._find_user(t, upn) is not None:
            return _error(400, "Request_BadRequest", "Another object with the same value for property "
                                                     "userPrincipalName already exists.")
        profile = body.pop("passwordProfile")
        if not isinstance(profile, dict) or len(str(profile.get("password") or "")) < 8:
            return _error(400, "Request_BadRequest", "The specified password does not comply with password "
                                                     "complexity requirements.")
        uid = str(uuid.uuid4())
        fields = {"userPrincipalName": upn, "displayName": body["displayName"], "givenName": body.get("givenName"),
                  "surname": body.get("surname"), "mail": None, "accountEnabled": bool(body["accountEnabled"]),
                  "usageLocation": body.get("usageLocation"), "jobTitle": body.get("jobTitle"),
                  "department": body.get("department"), "proxyAddresses": [], "assignedLicenses": [],
                  "createdDateTime": _iso(datetime.now(timezone.utc))}
        t.users.put(uid, fields, self._bump(t))
        t.passwords[uid] = dict(profile)
        return Response(201, {"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#users/$entity",
                              **t.users.items[uid]})

    def _assign_license(self, req: Request, t: _Tenant, uid: str) -> Response:
        body = req.json()
        add, remove = body["addLicenses"], body["removeLicenses"]
        if not isinstance(add, list) or not isinstance(remove, list):
            raise ValueError("addLicenses and removeLicenses must be lists")
        known = {sku for sku, _, _ in SKUS}
        for sku in [a.get("skuId") for a in add] + list(remove):
            if sku not in known:
                return _error(400, "Request_BadRequest", f"License {sku} does not correspond to a valid company "
                                                         f"License.")
        user = t.users.items[uid]
        if add and not user.get("usageLocation"):
            return _error(400, "Request_BadRequest", "License assignment cannot be done for user with invalid "
                                                     "usage location.")
        licences = {lic["skuId"]: lic for lic in user.get("assignedLicenses") or []}
        for a in add:
            licences[a["skuId"]] = {"skuId": a["skuId"], "disabledPlans": list(a.get("disabledPlans") or [])}
        for sku in remove:
            licences.pop(sku, None)
        fields = {"assignedLicenses": list(licences.values())}
        if any(sku in licences for sku, _, plans in SKUS if any(n.startswith("EXCHANGE_") for _, n in plans)) \
                and not user.get("mail"):
            fields["mail"] = user["userPrincipalName"]
        t.users.put(uid, fields, self._bump(t))
        return Response(200, {"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#users/$entity",
                              **t.users.items[uid]})


class _BadRequest(Exception):
    pass


# -- command line (through microsoft.py) ------------------------------------------------------------

def add_arguments(parser) -> None:
    g = parser.add_argument_group("Microsoft Graph")
    g.add_argument("--graph-tenants", type=int, default=2, help="generated tenants (default 2)")
    g.add_argument("--graph-users", type=int, default=50, help="users per tenant (default 50)")
    g.add_argument("--graph-groups", type=int, default=10, help="groups per tenant (default 10)")
    g.add_argument("--graph-contacts", type=int, default=5, help="org contacts per tenant (default 5)")
    g.add_argument("--graph-members", type=int, default=5, help="members per group (default 5)")
    g.add_argument("--graph-page-size", type=int, default=100, help="default page size (default 100)")
    g.add_argument("--graph-seed", type=int, default=0, help="seed of the generated ids (default 0)")
    g.add_argument("--graph-latency", type=float, default=0.0, help="seconds each Graph request takes (default 0)")


def from_arguments(args, issuer) -> GraphApi:
    return GraphApi(issuer, tenants=args.graph_tenants, users_per_tenant=args.graph_users,
                    groups_per_tenant=args.graph_groups, contacts_per_tenant=args.graph_contacts,
                    members_per_group=args.graph_members, page_size=args.graph_page_size, seed=args.graph_seed,
                    latency=args.graph_latency)


def main(argv: list[str] | None = None) -> int:
    """Print the Airflow connections and m365_tenants rows for a running sandbox's tenants."""
    import argparse
    import shlex

    p = argparse.ArgumentParser(prog="microsoft_graph.py", description=main.__doc__)
    p.add_argument("--url", default="http://127.0.0.1:8767", help="the Microsoft sandbox's URL")
    add_arguments(p)
    a = p.parse_args(argv)
    api = from_arguments(a, _ms.TokenIssuer())
    rows = []
    for i in range(a.graph_tenants):
        conn_id = f"m365_tenant_{i}"
        print(f"export AIRFLOW_CONN_{conn_id.upper()}={shlex.quote(json.dumps(api.connection(i, a.url)))}")
        rows.append(f"('{api.tenant_id(i)}', '{conn_id}')")
    print("-- INSERT INTO m365_tenants (tenant_id, conn_id) VALUES " + ", ".join(rows)
          + " ON CONFLICT (tenant_id) DO NOTHING;")
    return 0


if __name__ == "__main__":
    sys.exit(main())
