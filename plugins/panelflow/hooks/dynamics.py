"""Dynamics 365 / Dataverse Web API (OData v4, ``/api/data/v9.2``): users, business units, security roles.

One Dataverse environment (organisation) is reached with one app registration: an Airflow connection
of type ``panelflow_dynamics`` (``dynamics`` by default; ``crm_organizations.conn_id`` names each
environment's) and the organisation URL (``crm_organizations.url``, else the connection's host):

- host = the organisation URL (``https://contoso.crm.dynamics.com``) when the hook is not given one;
- login = the app's client (application) id, password = its client secret;
- extras: ``tenant_id`` (the customer's Microsoft Entra tenant — required), ``authority`` (default
  ``https://login.microsoftonline.com``), ``timeout`` (seconds, default 30), ``retries`` (attempts per
  request, default 6), ``backoff`` (first wait, doubling; default 1), ``max_retry_wait`` (the longest
  wait, also the cap on ``Retry-After``; default 300, Dataverse's service-protection window),
  ``page_size`` (records per page, sent as ``Prefer: odata.maxpagesize``; default 500).

Tokens: client credentials against ``{authority}/{tenant_id}/oauth2/v2.0/token`` with scope
``{organisation URL}/.default``, cached until shortly before they expire; a 401 renews the token once
and resends — a second 401 is :class:`DynamicsAuthenticationError`. The secret and tokens travel only
in the token request's body and the ``Authorization`` header and are registered with the masker.

Every request carries ``OData-MaxVersion: 4.0``, ``OData-Version: 4.0`` and ``Accept:
application/json``. Service protection: a 429 (or 5xx, a timeout, a lost connection) is retried after
what ``Retry-After`` says (Dataverse always sends it with a 429), else exponentially; once the attempts
are spent, :class:`DynamicsUnavailable`. Collections follow ``@odata.nextLink`` (same host only) until
there is none. A record that cannot be read (no GUID key …) is returned in the page's ``bad`` list with
why, so a caller reports it and goes on with the rest.

Writes: ``PATCH systemusers(<id>)`` carries ``If-Match: <@odata.etag>`` (optimistic concurrency) and
``Prefer: return=representation``; a 412 is :class:`DynamicsPreconditionFailed` — the record changed
since it was read, so the caller re-reads it. Role membership is the N:N navigation property
``systemuserroles_association``: ``POST …/$ref`` with ``@odata.id`` associates, ``DELETE …/$ref?$id=``
disassociates.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Iterator
from urllib.parse import quote, urlsplit
from uuid import UUID

from panelflow.hooks._extras import extra_number
from panelflow.hooks._http import (
    HttpApiHook, RequestRefused, error_message, iso_time, json_object, oauth_token, text_value,
)

DEFAULT_AUTHORITY = "https://login.microsoftonline.com"
API_PATH = "/api/data/v9.2"
MAX_PAGES = 100_000
TOKEN_MARGIN = 120.0
ODATA_HEADERS = {"OData-MaxVersion": "4.0", "OData-Version": "4.0"}
DUPLICATE_KEY = "0x80040237"  # Dataverse's "Cannot insert duplicate key": the association already exists
USER_FIELDS = ("systemuserid", "domainname", "firstname", "lastname", "isdisabled", "accessmode", "caltype",
               "_businessunitid_value", "modifiedon")


class DynamicsError(Exception):
    """Any failure to get an answer from Dataverse."""


class DynamicsUnavailable(DynamicsError):
    """Throttled (429), failing (5xx) or unreachable through every attempt."""


class DynamicsRequestError(DynamicsError, RequestRefused):
    """Dataverse refused the request (4xx); resending it unchanged will not help."""


class DynamicsAuthenticationError(DynamicsRequestError):
    """The app's credentials or token were refused: every request to this environment fails alike."""


class DynamicsNotFound(DynamicsRequestError):
    """No such record."""


class DynamicsPreconditionFailed(DynamicsRequestError):
    """412: the record's ETag changed since it was read (someone else wrote it meanwhile)."""


class DynamicsResponseError(DynamicsError):
    """An answer that is not what the Web API documents."""


# -- records --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SystemUser:
    id: UUID
    domainname: str | None
    first_name: str | None
    last_name: str | None
    is_disabled: bool
    access_mode: int | None
    cal_type: int | None
    business_unit: UUID | None
    modified_on: datetime | None
    etag: str | None
    roles: tuple[UUID, ...] | None = None  # None: not expanded

    def as_row(self) -> dict[str, Any]:
        return {"systemuserid": str(self.id), "domainname": self.domainname, "first_name": self.first_name,
                "last_name": self.last_name, "is_disabled": self.is_disabled, "access_mode": self.access_mode,
                "cal_type": self.cal_type, "businessunitid": _str(self.business_unit),
                "crm_modified_on": self.modified_on.isoformat() if self.modified_on else None, "etag": self.etag,
                "roles": [str(r) for r in self.roles or ()]}


@dataclass(frozen=True)
class BusinessUnit:
    id: UUID
    name: str
    parent: UUID | None


@dataclass(frozen=True)
class Role:
    id: UUID
    name: str
    business_unit: UUID


@dataclass(frozen=True)
class Organization:
    id: UUID
    name: str | None


@dataclass
class Page:
    number: int
    items: list = field(default_factory=list)
    bad: list[tuple[str, str]] = field(default_factory=list)  # (record, why)


# -- the hook -------------------------------------------------------------------------------------


class DynamicsHook(HttpApiHook):
    """One ``httpx.Client`` and one cached token per hook (one organisation); ``close()`` it."""

    conn_name_attr = "dynamics_conn_id"
    default_conn_name = "dynamics"
    conn_type = "panelflow_dynamics"
    hook_name = "panelflow Dynamics 365 (Dataverse)"

    BASE_URL_NAME = "the organisation URL"
    USER_AGENT = "panelflow-dynamics"
    DEFAULT_MAX_RETRY_WAIT = 300.0
    DEFAULT_PAGE_SIZE = 500

    def __init__(self, dynamics_conn_id: str = default_conn_name, *, org_url: str | None = None, sleep=time.sleep,
                 clock=time.monotonic, **kwargs):
        super().__init__(dynamics_conn_id, sleep=sleep, **kwargs)
        self.org_url = org_url.rstrip("/") if org_url else None
        self._clock = clock
        self._page_size = self.DEFAULT_PAGE_SIZE
        self._token_request: tuple[str, dict[str, str]] | None = None
        self._access_token: str | None = None
        self._token_expires = 0.0
        self.tokens_acquired = 0

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        form = cls._rest_form(hidden=["port", "schema"], labels={"login": "Application (client) ID",
                                                                  "password": "Client secret"},
                              host="https://contoso.crm.dynamics.com",
                              extra='{"tenant_id": "<customer tenant id>", "timeout": 30, "retries": 6,'
                                    ' "backoff": 1, "max_retry_wait": 300, "page_size": 500}')
        form["relabeling"]["host"] = "Organisation URL (when the panel names none)"
        return form

    # -- connection -----------------------------------------------------------------------------

    def _api_url(self, conn) -> str:
        org = self.org_url or super()._api_url(conn)
        self.org_url = org.rstrip("/")
        return self.org_url + API_PATH

    def _configure(self, conn, extra: dict[str, Any]) -> dict[str, str]:
        cid = self.dynamics_conn_id
        tenant = str(extra.get("tenant_id") or "").strip()
        if not conn.login or not conn.password:
            raise ValueError(f"connection {cid!r} needs login (the app's client id) and password (its secret)")
        if not tenant:
            raise ValueError(f"connection {cid!r} has no extra 'tenant_id' (the customer's Entra tenant)")
        self._page_size = extra_number(cid, extra, "page_size", self.DEFAULT_PAGE_SIZE, kind=int, minimum=1)
        org = self.org_url or super()._api_url(conn)
        authority = str(extra.get("authority") or DEFAULT_AUTHORITY).rstrip("/")
        self._token_request = (f"{authority}/{quote(tenant, safe='')}/oauth2/v2.0/token", {
            "grant_type": "client_credentials", "client_id": conn.login, "client_secret": conn.password,
            "scope": f"{org.rstrip('/')}/.default"})
        self.tenant_id = tenant
        return dict(ODATA_HEADERS)

    def test_connection(self) -> tuple[bool, str]:
        """Whether the app signs in and the organisation answers."""
        try:
            self.organization()
        except (DynamicsError, ValueError) as exc:
            return False, str(exc)
        return True, "signed in; Dataverse answered"

    @property
    def _where(self) -> str:
        return f"Dataverse {self.org_url or '?'} (connection {self.dynamics_conn_id!r})"

    # -- tokens ---------------------------------------------------------------------------------

    def _token(self) -> str:
        if self._access_token is not None and self._clock() < self._token_expires:
            return self._access_token
        url, form = self._token_request
        where = f"{self._where}: sign-in to tenant {self.tenant_id}"
        response = self._with_retries(lambda: self._answer("POST", url, data=form), self._unavailable(where))
        token, lifetime = oauth_token(response, where, refused=DynamicsAuthenticationError,
                                      malformed=DynamicsResponseError)
        self._access_token = token
        self._token_expires = self._clock() + lifetime - min(TOKEN_MARGIN, lifetime / 2)
        self.tokens_acquired += 1
        return token

    # -- requests -------------------------------------------------------------------------------

    @staticmethod
    def _unavailable(where: str):
        return lambda reason: DynamicsUnavailable(f"{where}: {reason}")

    def _path(self, uri: str) -> str:
        """A nextLink (absolute) or a path below the Web API root, as a URL of this organisation only."""
        if "://" in uri:
            parts, base = urlsplit(uri), urlsplit(self.settings.base_url)
            if (parts.scheme, parts.netloc) != (base.scheme, base.netloc) or not parts.path.startswith(base.path):
                raise DynamicsResponseError(f"{self._where}: a link points elsewhere ({parts.netloc}{parts.path});"
                                            " not followed")
            return uri
        return self.settings.base_url + "/" + uri.lstrip("/")

    def request(self, method: str, uri: str, *, what: str, params: dict[str, Any] | None = None, body: Any = None,
                headers: dict[str, str] | None = None):
        """The 2xx answer to ``method uri`` (token renewed once on a 401; 429/5xx retried)."""
        self.get_conn()
        url = self._path(uri)
        where = f"{self._where}: {what}"
        renewed = False

        def attempt():
            nonlocal renewed
            while True:
                sent = {**(headers or {}), "Authorization": f"Bearer {self._token()}"}
                response = self._send(self._client, method, url, params=params, headers=sent,
                                      **({"json": body} if body is not None else {}))
                if response.status_code == 401 and not renewed:
                    renewed = True
                    self._access_token = None
                    continue
                self._raise_if_busy(response)
                return response

        response = self._with_retries(attempt, self._unavailable(where))
        status = response.status_code
        if 200 <= status < 300:
            return response
        message = error_message(response)
        error = (json_object(response) or {}).get("error")
        code = error.get("code") if isinstance(error, dict) else None
        kind = {401: DynamicsAuthenticationError, 403: DynamicsAuthenticationError, 404: DynamicsNotFound,
                412: DynamicsPreconditionFailed}.get(status, DynamicsRequestError)
        raise kind(f"{where}: HTTP {status}: {message}", http_status=status, code=code)

    def _json(self, uri: str, what: str, params=None, headers=None) -> dict[str, Any]:
        payload = json_object(self.request("GET", uri, what=what, params=params, headers=headers))
        if payload is None:
            raise DynamicsResponseError(f"{self._where}: {what}: the answer is not a JSON object")
        return payload

    def pages(self, entity_set: str, parse, *, select: tuple[str, ...], filter: str | None = None,
              expand: str | None = None, what: str | None = None) -> Iterator[Page]:
        """Each page of ``entity_set`` (``$select``/``$filter``/``$expand``), records parsed one by one."""
        self.get_conn()
        what = what or entity_set
        params: dict[str, Any] | None = {"$select": ",".join(select)}
        if filter:
            params["$filter"] = filter
        if expand:
            params["$expand"] = expand
        headers = {"Prefer": f"odata.maxpagesize={self._page_size}"}
        uri, seen = entity_set, set()
        for number in range(1, MAX_PAGES + 1):
            payload = self._json(uri, f"{what}, page {number}", params, headers)
            values = payload.get("value")
            if not isinstance(values, list):
                raise DynamicsResponseError(f"{self._where}: {what}, page {number}: 'value' is not a list")
            page = Page(number)
            for index, item in enumerate(values):
                try:
                    page.items.append(parse(item))
                except (ValueError, TypeError, KeyError, AttributeError) as exc:
                    key = item.get(select[0]) if isinstance(item, dict) else None
                    page.bad.append((f"{entity_set} {key or f'#{index + 1} of page {number}'}", str(exc)))
            yield page
            nxt = payload.get("@odata.nextLink")
            if not nxt:
                return
            if not isinstance(nxt, str) or nxt in seen:
                raise DynamicsResponseError(f"{self._where}: {what}, page {number}: a bad or repeated nextLink")
            seen.add(nxt)
            uri, params = nxt, None
        raise DynamicsResponseError(f"{self._where}: {what}: more than {MAX_PAGES} pages")

    # -- the API --------------------------------------------------------------------------------

    def organization(self) -> Organization:
        values = self._json("organizations", "organization", {"$select": "organizationid,name"}).get("value")
        if not isinstance(values, list) or len(values) != 1:
            raise DynamicsResponseError(f"{self._where}: organizations: not one organisation")
        try:
            return Organization(_guid(values[0], "organizationid"), text_value(values[0].get("name")))
        except (ValueError, TypeError) as exc:
            raise DynamicsResponseError(f"{self._where}: organizations: {exc}") from None

    def business_unit_pages(self) -> Iterator[Page]:
        return self.pages("businessunits", _business_unit,
                          select=("businessunitid", "name", "_parentbusinessunitid_value"))

    def role_pages(self) -> Iterator[Page]:
        return self.pages("roles", _role, select=("roleid", "name", "_businessunitid_value"))

    def user_pages(self, *, fields: tuple[str, ...] = USER_FIELDS, filter: str | None = None,
                   with_roles: bool = False) -> Iterator[Page]:
        expand = "systemuserroles_association($select=roleid)" if with_roles else None
        return self.pages("systemusers", _user, select=fields, filter=filter, expand=expand, what="users")

    def user(self, user_id: UUID) -> SystemUser:
        """One user, with its roles, as it is now."""
        what = f"user {user_id}"
        payload = self._json(f"systemusers({user_id})", what, {
            "$select": ",".join(USER_FIELDS), "$expand": "systemuserroles_association($select=roleid)"})
        try:
            return _user(payload)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise DynamicsResponseError(f"{self._where}: {what}: {exc}") from None

    def roles_named(self, name: str, business_unit: UUID) -> list[Role]:
        return [r for page in self.pages("roles", _role, select=("roleid", "name", "_businessunitid_value"),
                                         filter=f"name eq {odata_string(name)} and _businessunitid_value eq"
                                                f" {business_unit}")
                for r in page.items]

    def role(self, role_id: UUID) -> Role | None:
        """The role, or None when CRM has no such role (deleted)."""
        found = [r for page in self.pages("roles", _role, select=("roleid", "name", "_businessunitid_value"),
                                          filter=f"roleid eq {role_id}") for r in page.items]
        return found[0] if found else None

    def update_user(self, user: SystemUser, changes: dict[str, Any]) -> SystemUser:
        """PATCH the user only if it is still the version read (``If-Match``); the user as it now is.
        :class:`DynamicsPreconditionFailed` when CRM changed it meanwhile."""
        if not user.etag:
            raise DynamicsResponseError(f"{self._where}: user {user.id} was read without an ETag")
        what = f"update of user {user.id}"
        response = self.request("PATCH", f"systemusers({user.id})", what=what, body=changes,
                                params={"$select": ",".join(USER_FIELDS)},
                                headers={"If-Match": user.etag, "Prefer": "return=representation"})
        payload = json_object(response)
        try:
            if payload is None:
                raise ValueError("no representation in the answer")
            return _user(payload)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise DynamicsResponseError(f"{self._where}: {what}: {exc}") from None

    def add_role(self, user_id: UUID, role_id: UUID) -> bool:
        """Associate the role; False if the user already had it (Dataverse's duplicate key)."""
        try:
            self.request("POST", f"systemusers({user_id})/systemuserroles_association/$ref",
                         what=f"role {role_id} for user {user_id}",
                         body={"@odata.id": self._role_ref(role_id)})
        except DynamicsRequestError as exc:
            if exc.code == DUPLICATE_KEY:
                return False
            raise
        return True

    def remove_role(self, user_id: UUID, role_id: UUID) -> None:
        self.request("DELETE", f"systemusers({user_id})/systemuserroles_association/$ref",
                     what=f"removal of role {role_id} from user {user_id}",
                     params={"$id": self._role_ref(role_id)})

    def _role_ref(self, role_id: UUID) -> str:
        """The role's absolute URL: how OData names the other end of an association."""
        self.get_conn()
        return f"{self.settings.base_url}/roles({role_id})"


# -- parsing --------------------------------------------------------------------------------------


def odata_string(value: str) -> str:
    """An OData string literal: single quotes, an embedded quote doubled."""
    return "'" + value.replace("'", "''") + "'"


def _guid(item: dict, key: str, required: bool = True) -> UUID | None:
    value = item.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{key!r} is missing or not a GUID")
    return UUID(value)


def _str(value) -> str | None:
    return None if value is None else str(value)


def _option(item: dict, key: str) -> int | None:
    value = item.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{key!r} is not an option value: {value!r}")
    return value


def _user(item: Any) -> SystemUser:
    if not isinstance(item, dict):
        raise ValueError("not an object")
    disabled = item.get("isdisabled", False)
    if not isinstance(disabled, bool):
        raise ValueError(f"'isdisabled' is not a boolean: {disabled!r}")
    roles = item.get("systemuserroles_association")
    if roles is not None and not isinstance(roles, list):
        raise ValueError("'systemuserroles_association' is not a list")
    return SystemUser(
        id=_guid(item, "systemuserid"), domainname=text_value(item.get("domainname")),
        first_name=text_value(item.get("firstname")), last_name=text_value(item.get("lastname")),
        is_disabled=disabled, access_mode=_option(item, "accessmode"), cal_type=_option(item, "caltype"),
        business_unit=_guid(item, "_businessunitid_value", required=False),
        modified_on=iso_time(item.get("modifiedon")),
        etag=text_value(item.get("@odata.etag")),
        roles=None if roles is None else tuple(sorted(_guid(r, "roleid") for r in roles)))


def _business_unit(item: Any) -> BusinessUnit:
    if not isinstance(item, dict) or not text_value(item.get("name")):
        raise ValueError("no 'name'")
    return BusinessUnit(_guid(item, "businessunitid"), text_value(item["name"]),
                        _guid(item, "_parentbusinessunitid_value", required=False))


def _role(item: Any) -> Role:
    if not isinstance(item, dict) or not text_value(item.get("name")):
        raise ValueError("no 'name'")
    return Role(_guid(item, "roleid"), text_value(item["name"]), _guid(item, "_businessunitid_value"))
