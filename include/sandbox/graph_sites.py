"""Microsoft Graph v1.0 for SharePoint Online: sites, their document-library drive (quota), a group
site's owners, the SharePoint site usage report and group-connected team sites — as much as
SyncFromBackendWork 2, UsageReportWork 5 and GroupActionWorkSP's Online jobs use.

A companion of ``microsoft_graph.py`` (kept apart so that module stays readable): it serves the
same generated tenants and trusts the same ``TokenIssuer``, and sits **in front of** the
:class:`~sandbox.microsoft_graph.GraphApi` in the sandbox's list (``MicrosoftSandbox([issuer,
SharePointSites(graph), graph])``) so the paths below are its own and every other path falls
through to the directory. Stdlib only.

Endpoints (the shapes and errors Graph v1.0 documents)::

    GET /v1.0/sites/getAllSites          $select, $top; @odata.nextLink ($skiptoken). Each site:
                                         id "{hostname},{site collection id},{web id}", name,
                                         displayName, webUrl, createdDateTime, lastModifiedDateTime,
                                         isPersonalSite, siteCollection {hostname}, root {}
    GET /v1.0/sites/{site id}            one site · 404 itemNotFound
    GET /v1.0/sites/{site id}/drive      the document library: driveType "documentLibrary", owner
                                         ({"group": {id, displayName, email}} for a group site,
                                         {"user": {displayName}} otherwise), quota {total, used,
                                         remaining, deleted, state}
    GET /v1.0/groups/{id}/owners         a site group's owners (users: id, displayName,
                                         userPrincipalName, mail); any other group falls through
    GET /v1.0/reports/getSharePointSiteUsageDetail(period='D7|D30|D90|D180')
                                         302 Found, ``Location`` a pre-authenticated download URL
                                         (no token needed), which answers the CSV (UTF-8 with a
                                         BOM): Report Refresh Date, Site Id, Site URL, Owner Display
                                         Name, Is Deleted, Last Activity Date, File Count, Active
                                         File Count, Page View Count, Visited Page Count, Storage
                                         Used (Byte), Storage Allocated (Byte), Root Web Template,
                                         Owner Principal Name, Report Period. Sites removed are
                                         listed with Is Deleted = True. 400 for another period.
    GET /v1.0/sites/root                 the tenant's root site (its SharePoint host name)

Group-connected team sites (Graph creates a team site only with its Microsoft 365 group)::

    GET    /v1.0/groups?$filter=mailNickname eq '{alias}'   the group with that alias (``value`` 0 or 1)
    POST   /v1.0/groups          {displayName, mailNickname, mailEnabled: true, securityEnabled: false,
                                 groupTypes: ["Unified"], visibility?, "owners@odata.bind": [users/{id}]}
                                 → 201 group; its site at https://<host>/sites/<alias> is provisioned after
                                 ``provision_delay`` reads of it. 400 "Another object with the same value
                                 for property mailNickname already exists." · an owner unknown: 400
    GET    /v1.0/groups/{id}/sites/root   the group's site · 404 itemNotFound while it is provisioned
    DELETE /v1.0/groups/{id}     a site group: 204, the group and its site deleted · 404
    (A request without ``$filter``, another group's path or another body falls through to the directory.)

In-process controls: ``add_site(tenant, name, …)`` → the Graph site id, ``update_site``,
``remove_site``; ``conceal = True``: the report hides site URLs and owner names as the tenant's
"Display concealed user, group, and site names in all reports" setting (Microsoft's default) does
(Site URL empty, owners as hashes; Site Id stays); ``report_refresh_date``; ``fail_next(n,
status)``: the next ``n`` requests here get that status; ``denied``: site ids whose drive answers
403 accessDenied (an app without access to that site); ``lose_next_answer(method)``: the next such
write is applied and answered 504; ``served`` (Counter of (tenant, path)); ``writes`` ((tenant,
method, path, status) of each write).
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
import secrets
import threading
from collections import Counter
from datetime import date
from urllib.parse import unquote

from sandbox import microsoft as _ms
from sandbox.microsoft_graph import _b64, _error, _uid, _unb64

Request, Response = _ms.Request, _ms.Response

REPORT_COLUMNS = ("Report Refresh Date", "Site Id", "Site URL", "Owner Display Name", "Is Deleted",
                  "Last Activity Date", "File Count", "Active File Count", "Page View Count", "Visited Page Count",
                  "Storage Used (Byte)", "Storage Allocated (Byte)", "Root Web Template", "Owner Principal Name",
                  "Report Period")
PERIODS = ("D7", "D30", "D90", "D180")
GIB = 1024 ** 3


class SharePointSites:
    """The SharePoint Online endpoints above, for the tenants of a ``GraphApi``."""

    def __init__(self, graph, page_size: int = 100):
        self.graph = graph
        self.page_size = max(1, int(page_size))
        self.sites: dict[str, dict[str, dict]] = {}      # tenant id → Graph site id → site state
        self.removed: dict[str, dict[str, dict]] = {}
        self.downloads: dict[str, bytes] = {}
        self.conceal = False
        self.report_refresh_date = date(2026, 2, 27)
        self.served: Counter = Counter()
        self._failures: list[int] = []
        self.provision_delay = 0
        self.denied: set[str] = set()                    # site ids whose drive answers 403 accessDenied
        self._provisioning: dict[str, list] = {}         # group id → [reads left, tenant, site kwargs]
        self._lost: list[str] = []
        self.writes: list[tuple] = []
        self._lock = threading.Lock()

    # -- in-process controls ----------------------------------------------------------------------

    def host(self, tenant) -> str:
        return f"tenant{self.graph._tenant(tenant).index}.sharepoint.com"

    def add_site(self, tenant, name: str, *, title: str | None = None, used_bytes: int = GIB,
                 total_bytes: int = 25 * 1024 * GIB, owners: list[str] | None = None, group: bool = True,
                 template: str | None = None, files: int = 10, active_files: int = 2, page_views: int = 30,
                 visited_pages: int = 5, last_activity: date | None = date(2026, 2, 20),
                 group_id: str | None = None) -> str:
        """A site collection at ``https://<tenant>.sharepoint.com/sites/<name>``; ``owners`` are UPNs
        (a group site's group owners; the first one is the report's owner otherwise)."""
        t = self.graph._tenant(tenant)
        host = self.host(tenant)
        collection, web = _uid("spsite", t.id, name), _uid("spweb", t.id, name)
        site_id = f"{host},{collection},{web}"
        owners = list(owners or [f"admin@{t.domain}"])
        state = {"id": site_id, "collection": collection, "name": name, "displayName": title or name.title(),
                 "webUrl": f"https://{host}/sites/{name}", "host": host, "used": used_bytes, "total": total_bytes,
                 "group_id": (group_id or _uid("spgroup", t.id, name)) if group else None, "owners": owners,
                 "template": template or ("GROUP" if group else "SITEPAGEPUBLISHING"), "files": files,
                 "active_files": active_files, "page_views": page_views, "visited_pages": visited_pages,
                 "last_activity": last_activity, "created": "2025-06-01T09:00:00Z", "modified": "2026-02-20T16:12:09Z"}
        with self._lock:
            self.sites.setdefault(t.id, {})[site_id] = state
            self.removed.get(t.id, {}).pop(site_id, None)
        return site_id

    def update_site(self, tenant, site_id: str, **fields) -> None:
        with self._lock:
            self.sites[self.graph._tenant(tenant).id][site_id].update(fields)

    def remove_site(self, tenant, site_id: str) -> None:
        t = self.graph._tenant(tenant)
        with self._lock:
            self.removed.setdefault(t.id, {})[site_id] = self.sites[t.id].pop(site_id)

    def fail_next(self, n: int, status: int = 503) -> None:
        with self._lock:
            self._failures.extend([status] * n)

    def lose_next_answer(self, method: str = "POST") -> None:
        with self._lock:
            self._lost.append(method)

    # -- HTTP -------------------------------------------------------------------------------------

    def handle(self, req: Request) -> Response | None:
        path = unquote(req.path).rstrip("/")
        m = re.fullmatch(r"/reports-download/([A-Za-z0-9_-]+)", path)
        if m and req.method == "GET":            # pre-authenticated: no token, as Graph's download URLs
            with self._lock:
                body = self.downloads.get(m.group(1))
            if body is None:
                return Response(404, b"The report download link has expired.", {"Content-Type": "text/plain"})
            return Response(200, body, {"Content-Type": "application/octet-stream"})
        if not path.startswith("/v1.0/") or not self._mine(req, path[len("/v1.0"):]):
            return None
        route = path[len("/v1.0"):]
        who = self.graph.issuer.authorise(req)
        if not isinstance(who, str):
            return who
        if who not in self.graph.tenants:
            return _error(403, "Authorization_RequestDenied", f"tenant {who} has no directory here")
        with self._lock:
            self.served[(who, route)] += 1
            failure = self._failures.pop(0) if self._failures else None
        if failure is not None:
            return _error(failure, "serviceNotAvailable", "The service is temporarily unavailable.",
                          {"Retry-After": "0"})
        if req.method != "GET":
            return self._write(req, who, route)
        with self._lock:
            sites = dict(self.sites.get(who, {}))
            removed = dict(self.removed.get(who, {}))
        if route == "/sites/getAllSites":
            return self._all_sites(req, sites)
        if route == "/sites/root":
            return Response(200, {"id": f"{self.host(who)},{_uid('sproot', who)},{_uid('sprootweb', who)}",
                                  "name": "", "displayName": "Communication site",
                                  "webUrl": f"https://{self.host(who)}",
                                  "siteCollection": {"hostname": self.host(who)}, "root": {}})
        one = re.fullmatch(r"/sites/([^/]+)(/drive)?", route)
        if one:
            site = sites.get(one.group(1))
            if site is None:
                return _error(404, "itemNotFound", "Requested site could not be found")
            if one.group(2) and site["id"] in self.denied:
                return _error(403, "accessDenied", "Access denied")
            return Response(200, self._drive(site) if one.group(2) else {
                "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#sites/$entity", **self._site(site)})
        group = re.fullmatch(r"/groups/([^/]+)/(owners|sites/root)", route)
        if group and group.group(2) == "owners":
            return self._owners(self._group_site(group.group(1)))
        if group:
            return self._group_root(who, group.group(1))
        if route == "/groups":
            return self._group_by_alias(req, who)
        report = re.fullmatch(r"/reports/getSharePointSiteUsageDetail\(period='([^']*)'\)", route)
        if report:
            return self._report(req, report.group(1), sites, removed)
        return _error(400, "BadRequest", f"Resource not found for the segment '{route.rsplit('/', 1)[-1]}'.")

    def _mine(self, req: Request, route: str) -> bool:
        """The requests this API answers; every other one falls through to the directory's ``GraphApi``."""
        group = re.fullmatch(r"/groups/([^/]+)(/owners|/sites/root)?", route)
        if req.method == "GET":
            return (route.startswith("/sites") or route.startswith("/reports/getSharePointSiteUsageDetail")
                    or (route == "/groups" and (req.arg("$filter") or "").startswith("mailNickname eq "))
                    or bool(group and group.group(2) == "/sites/root")
                    or bool(group and group.group(2) == "/owners" and self._group_site(group.group(1))))
        if req.method == "POST" and route == "/groups":
            try:
                return "Unified" in (req.json() or {}).get("groupTypes", [])
            except (ValueError, AttributeError):
                return False
        return req.method == "DELETE" and bool(group and group.group(2) is None) and (
            self._group_site(group.group(1)) is not None or group.group(1) in self._provisioning)

    # -- group-connected sites ----------------------------------------------------------------------

    def _group_by_alias(self, req: Request, tenant: str) -> Response:
        m = re.fullmatch(r"mailNickname eq '((?:[^']|'')*)'", req.arg("$filter") or "")
        if m is None:
            return _error(400, "Request_UnsupportedQuery", f"Unsupported query: {req.arg('$filter')}")
        alias = m.group(1).replace("''", "'").lower()
        t = self.graph._tenant(tenant)
        with t.lock:
            found = [g for g in t.groups.items.values() if (g.get("mailNickname") or "").lower() == alias]
        return Response(200, {"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#groups",
                              "value": [{k: g.get(k) for k in ("id", "displayName", "mailNickname", "groupTypes")}
                                        for g in found]})

    def _group_root(self, tenant: str, group_id: str) -> Response:
        with self._lock:
            pending = self._provisioning.get(group_id)
            if pending is not None:
                pending[0] -= 1
                if pending[0] < 0:
                    del self._provisioning[group_id]
        if pending is not None and pending[0] < 0:
            self.add_site(pending[1], **pending[2])
        site = self._group_site(group_id)
        if site is None:
            return _error(404, "itemNotFound", "Requested site could not be found")
        return Response(200, {"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#sites/$entity",
                              **self._site(site)})

    def _write(self, req: Request, tenant: str, route: str) -> Response:
        if req.method == "POST":
            resp = self._create_group(req, tenant)
        else:
            group_id = route.rsplit("/", 1)[-1]
            site = self._group_site(group_id)
            with self._lock:
                self._provisioning.pop(group_id, None)
            if site is not None:
                self.remove_site(tenant, site["id"])
            t = self.graph._tenant(tenant)
            if group_id in t.groups.items:
                self.graph.remove_group(tenant, group_id)
            resp = Response(204)
        with self._lock:
            lost = req.method in self._lost and resp.status < 300
            if lost:
                self._lost.remove(req.method)
            self.writes.append((tenant, req.method, route, 504 if lost else resp.status))
        if lost:
            return _error(504, "GatewayTimeout", "The operation timed out (the change may have been applied).")
        return resp

    def _create_group(self, req: Request, tenant: str) -> Response:
        body = req.json()
        t = self.graph._tenant(tenant)
        missing = [k for k in ("displayName", "mailNickname", "mailEnabled", "securityEnabled") if k not in body]
        if missing:
            return _error(400, "Request_BadRequest", f"Property '{missing[0]}' is required.")
        alias = str(body["mailNickname"])
        with t.lock:
            taken = any((g.get("mailNickname") or "").lower() == alias.lower() for g in t.groups.items.values())
        if taken:
            return _error(400, "Request_BadRequest", "Another object with the same value for property mailNickname "
                                                     "already exists.")
        owners = []
        for ref in body.get("owners@odata.bind") or []:
            user = str(ref).rstrip("/").rsplit("/", 1)[-1]
            if user not in t.users.items:
                return _error(400, "Request_BadRequest", f"Invalid object identifier '{user}'.")
            owners.append(t.users.items[user]["userPrincipalName"])
        group_id = self.graph.add_group(tenant, displayName=body["displayName"], mailNickname=alias,
                                        groupTypes=["Unified"], mailEnabled=True, securityEnabled=False,
                                        visibility=body.get("visibility", "Private"), mail=f"{alias}@{t.domain}")
        site = {"name": alias, "title": body["displayName"], "owners": owners or [f"admin@{t.domain}"],
                "used_bytes": 0, "group_id": group_id, "template": "GROUP", "files": 0, "active_files": 0,
                "page_views": 0, "visited_pages": 0, "last_activity": None}
        with self._lock:
            self._provisioning[group_id] = [self.provision_delay, tenant, site]
        return Response(201, {"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#groups/$entity",
                              **{k: v for k, v in t.groups.items[group_id].items()}})

    def _group_site(self, group_id: str) -> dict | None:
        with self._lock:
            return next((s for t in self.sites.values() for s in t.values() if s["group_id"] == group_id), None)

    @staticmethod
    def _site(s: dict) -> dict:
        return {"id": s["id"], "name": s["name"], "displayName": s["displayName"], "webUrl": s["webUrl"],
                "createdDateTime": s["created"], "lastModifiedDateTime": s["modified"], "isPersonalSite": False,
                "siteCollection": {"hostname": s["host"]}, "root": {}}

    def _all_sites(self, req: Request, sites: dict) -> Response:
        skip = req.arg("$skiptoken")
        if skip:
            state = _unb64(skip)
        else:
            try:
                top = min(int(req.arg("$top") or self.page_size), self.page_size)
            except ValueError:
                return _error(400, "invalidRequest", f"Invalid $top value '{req.arg('$top')}'.")
            state = {"after": None, "top": top, "sel": req.arg("$select")}
        ids = sorted(sites)
        start = 0 if state["after"] is None else next((i + 1 for i, x in enumerate(ids) if x == state["after"]),
                                                      len(ids))
        chunk = ids[start:start + state["top"]]
        select = [s for s in (state["sel"] or "").split(",") if s]
        value = []
        for sid in chunk:
            site = self._site(sites[sid])
            value.append({k: v for k, v in site.items() if not select or k in select or k == "id"})
        body = {"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#sites", "value": value}
        if start + len(chunk) < len(ids):
            body["@odata.nextLink"] = (f"{req.base_url}/v1.0/sites/getAllSites?$skiptoken="
                                       f"{_b64({**state, 'after': chunk[-1]})}")
        return Response(200, body)

    @staticmethod
    def _drive(s: dict) -> dict:
        used, total = s["used"], s["total"]
        ratio = used / total if total else 0
        state = "exceeded" if ratio >= 1 else "critical" if ratio >= 0.99 else "nearing" if ratio >= 0.9 else "normal"
        owner = ({"group": {"id": s["group_id"], "displayName": s["displayName"],
                            "email": f"{s['name']}@{s['host'].split('.')[0]}.onmicrosoft.com"}}
                 if s["group_id"] else {"user": {"displayName": "System Account"}})
        return {"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#drives/$entity",
                "id": "b!" + _b64({"site": s["collection"]})[:40], "driveType": "documentLibrary",
                "name": "Documents", "webUrl": f"{s['webUrl']}/Shared%20Documents",
                "createdDateTime": s["created"], "lastModifiedDateTime": s["modified"], "owner": owner,
                "quota": {"deleted": 0, "remaining": max(total - used, 0), "state": state, "total": total,
                          "used": used}}

    @staticmethod
    def _owners(s: dict) -> Response:
        value = [{"@odata.type": "#microsoft.graph.user", "id": _uid("spowner", upn), "displayName": upn.split("@")[0],
                  "userPrincipalName": upn, "mail": upn} for upn in s["owners"]]
        return Response(200, {"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#directoryObjects",
                              "value": value})

    def _report(self, req: Request, period: str, sites: dict, removed: dict) -> Response:
        if period not in PERIODS:
            return _error(400, "BadRequest", f"Invalid value '{period}' for parameter 'period'.")
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\r\n")
        writer.writerow(REPORT_COLUMNS)
        for deleted, group in ((False, sites), (True, removed)):
            for s in (group[k] for k in sorted(group)):
                owner = s["owners"][0]
                hidden = hashlib.md5(owner.encode()).hexdigest().upper()
                writer.writerow([self.report_refresh_date.isoformat(), s["collection"],
                                 "" if self.conceal else s["webUrl"],
                                 hidden if self.conceal else owner.split("@")[0], deleted,
                                 s["last_activity"].isoformat() if s["last_activity"] else "", s["files"],
                                 s["active_files"], s["page_views"], s["visited_pages"], s["used"], s["total"],
                                 f"{s['template']}#0", hidden if self.conceal else owner, period[1:]])
        token = secrets.token_urlsafe(18)
        with self._lock:
            self.downloads[token] = ("\ufeff" + out.getvalue()).encode("utf-8")
        return Response(302, None, {"Location": f"{req.base_url}/reports-download/{token}",
                                    "Content-Type": "text/plain"})

