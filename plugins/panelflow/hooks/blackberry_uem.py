"""BlackBerry UEM's REST API (UEM Web Services, v1): users, their groups and their devices.

One UEM server (tenant) = one Airflow connection (type ``panelflow_blackberry_uem``;
``bb_uem_servers.conn_id`` names each server's, ``blackberry_uem`` by default):

- host = the server's REST endpoint (``https://uem01.example.com:18084``; a bare host takes
  schema and port);
- login / password = a UEM administrator allowed to read users and devices;
- extras ``tenant_guid`` (the SRP ID chosen at install, ``S12345678`` — required: every route
  starts with it), ``provider`` (``LOCAL`` or ``AD``, default ``LOCAL``), ``domain`` (the AD
  domain, for ``AD``), ``page_size`` (users per page, default 100), ``user_query`` (a UEM search
  expression limiting the users read, e.g. ``emailAddress=*@contoso.example``), ``max_users``
  (default 50000: a bound on one sync), ``timeout``, ``retries``, ``backoff``, ``max_retry_wait``.

Authentication is UEM's basic (on-premises) scheme: ``POST /{tenant}/api/v1/util/authorization``
with ``Content-Type: application/vnd.blackberry.authorizationrequest-v1+json`` and
``{"provider", "username", "password" (base64), "domain"?}``; the ``text/plain`` answer is the
``Authorization`` header value for the other calls (UEM says: treat it as sensitive — it is
kept on the hook only and masked). A 401 renews it once; a 400 to the authorization request or a
second 401 is :class:`BlackBerryAuthenticationError`.

API (UEM documents a versioned media type per resource; the ``Accept`` header names it)::

    GET /users?offset=&max=&query=          application/vnd.blackberry.users-v1+json  {"users": [User]}
    GET /users/{userGuid}/groups            application/vnd.blackberry.groups-v1+json {"groups": [Group]}
    GET /users/{userGuid}/userDevices       application/vnd.blackberry.userdevices-v1+json {"userDevices": [...]}
    errors: application/vnd.blackberry.error-v1+json {"id", "subStatusCode", "message"}

Paging is UEM's: a page of ``max`` users at ``offset``; a page shorter than ``max`` is the last.
A page or list is parsed whole before it is handed out, so a malformed answer is rejected before
any of it is written. 429, 5xx, timeouts are retried (``panelflow.hooks._http``); then
:class:`BlackBerryUnavailable`.
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterator
from urllib.parse import quote

from panelflow.hooks._extras import extra_number
from panelflow.hooks._http import (
    HttpApiHook,
    RequestRefused,
    base_url_of,
    bool_value,
    iso_time,
    json_object,
    text_value,
)

AUTH_MEDIA = "application/vnd.blackberry.authorizationrequest-v1+json"
USERS_MEDIA = "application/vnd.blackberry.users-v1+json"
GROUPS_MEDIA = "application/vnd.blackberry.groups-v1+json"
USER_DEVICES_MEDIA = "application/vnd.blackberry.userdevices-v1+json"


class BlackBerryError(Exception):
    """Any failure to get an answer from a UEM server."""


class BlackBerryUnavailable(BlackBerryError):
    """Throttled, failing (5xx) or unreachable through every attempt."""


class BlackBerryRequestError(BlackBerryError, RequestRefused):
    """UEM refused the request (4xx)."""


class BlackBerryAuthenticationError(BlackBerryRequestError):
    """The API account was refused: nothing on this server can be read."""


class BlackBerryResponseError(BlackBerryError):
    """An answer that is not what UEM documents."""


@dataclass(frozen=True)
class User:
    guid: str
    username: str
    display_name: str | None
    email: str | None


@dataclass(frozen=True)
class UserDevice:
    """One activation of one device for one user, with the device's hardware and state."""

    guid: str
    device_guid: str | None
    hardware_model: str | None
    hardware_vendor: str | None
    os: str | None
    os_family: str | None
    os_version: str | None
    ownership: str | None
    enrollment_state: str | None
    enrollment_type: tuple[str, ...]
    compromised: bool | None
    out_of_compliance: tuple[str, ...]
    client_version: str | None
    activated_at: datetime | None
    last_contact_at: datetime | None


class BlackBerryUemHook(HttpApiHook):
    """One ``httpx.Client`` and one authorization value per hook (one UEM tenant); ``close()`` it."""

    conn_name_attr = "blackberry_uem_conn_id"
    default_conn_name = "blackberry_uem"
    conn_type = "panelflow_blackberry_uem"
    hook_name = "panelflow BlackBerry UEM"

    BASE_URL_NAME = "the UEM server's REST endpoint (https://host:18084)"
    USER_AGENT = "panelflow-blackberry-uem"
    DEFAULT_RETRIES = 4
    DEFAULT_PAGE_SIZE = 100
    DEFAULT_MAX_USERS = 50_000

    def __init__(self, blackberry_uem_conn_id: str = default_conn_name, *, sleep=time.sleep, **kwargs):
        super().__init__(blackberry_uem_conn_id, sleep=sleep, **kwargs)
        self._auth_request: dict[str, str] | None = None
        self._authorization: str | None = None
        self.page_size = self.DEFAULT_PAGE_SIZE
        self.max_users = self.DEFAULT_MAX_USERS
        self.user_query: str | None = None
        self.authorizations = 0

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return cls._rest_form(hidden=[], labels={"login": "UEM administrator", "password": "Password"},
                              host="https://uem01.example.com:18084",
                              extra='{"tenant_guid": "S12345678", "provider": "LOCAL", "page_size": 100}')

    def _api_url(self, conn) -> str:
        tenant = text_value(conn.extra_dejson.get("tenant_guid"))
        if not tenant:
            raise ValueError(f"connection {self._cid!r} has no extra 'tenant_guid' (the UEM SRP ID)")
        return f"{base_url_of(conn, self._cid, None, missing=self.BASE_URL_NAME)}/{quote(tenant, safe='')}/api/v1"

    def _configure(self, conn, extra: dict[str, Any]) -> dict[str, str]:
        cid = self._cid
        if not conn.login or not conn.password:
            raise ValueError(f"connection {cid!r} needs login and password (a UEM administrator)")
        provider = (text_value(extra.get("provider")) or "LOCAL").upper()
        if provider not in ("LOCAL", "AD"):
            raise ValueError(f"connection {cid!r}: extra 'provider' must be LOCAL or AD, not {provider!r}")
        request = {"provider": provider, "username": conn.login,
                   "password": base64.b64encode(conn.password.encode()).decode()}
        if provider == "AD":
            domain = text_value(extra.get("domain"))
            if not domain:
                raise ValueError(f"connection {cid!r}: provider AD needs extra 'domain'")
            request["domain"] = domain
        self._auth_request = request
        self.page_size = extra_number(cid, extra, "page_size", self.DEFAULT_PAGE_SIZE, kind=int, minimum=1)
        self.max_users = extra_number(cid, extra, "max_users", self.DEFAULT_MAX_USERS, kind=int, minimum=1)
        self.user_query = text_value(extra.get("user_query"))
        return {}

    # -- authorization --------------------------------------------------------------------------

    def _where(self, what: str) -> str:
        return f"BlackBerry UEM connection {self._cid!r}: {what}"

    def _authorize(self) -> str:
        if self._authorization is not None:
            return self._authorization
        where = self._where("authorization (POST /util/authorization)")
        response = self._with_retries(
            lambda: self._answer("POST", "/util/authorization", json=self._auth_request,
                                 headers={"Content-Type": AUTH_MEDIA, "Accept": "text/plain"}),
            lambda reason: BlackBerryUnavailable(f"{where}: {reason}"))
        if response.status_code != 200:
            raise BlackBerryAuthenticationError(f"{where} refused (HTTP {response.status_code}): {_message(response)}",
                                                http_status=response.status_code)
        value = response.text.strip()
        if not value:
            raise BlackBerryResponseError(f"{where}: the answer is empty")
        try:  # the value is a credential: never in a log in clear
            from airflow.sdk.log import mask_secret

            mask_secret(value)
        except Exception:  # pragma: no cover - masking is a safeguard, not a precondition
            pass
        self._authorization = value
        self.authorizations += 1
        return value

    def _get(self, path: str, media: str, what: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """The JSON object answering ``GET path`` (authorization renewed once on a 401)."""
        self.get_conn()
        where = self._where(f"{what} (GET {path})")
        renewed = False

        def attempt():
            nonlocal renewed
            while True:
                response = self._answer("GET", path, params=params,
                                        headers={"Accept": media, "Authorization": self._authorize()})
                if response.status_code == 401 and not renewed:
                    renewed, self._authorization = True, None
                    continue
                return response

        response = self._with_retries(attempt, lambda reason: BlackBerryUnavailable(f"{where}: {reason}"))
        status = response.status_code
        if status != 200:
            cls = BlackBerryAuthenticationError if status in (401, 403) else BlackBerryRequestError
            raise cls(f"{where}: HTTP {status}: {_message(response)}", http_status=status)
        payload = json_object(response)
        if payload is None:
            raise BlackBerryResponseError(f"{where}: the answer is not a JSON object")
        return payload

    def _list(self, payload: dict[str, Any], key: str, parse, where: str) -> list:
        items = payload.get(key, [])
        if not isinstance(items, list):
            raise BlackBerryResponseError(self._where(f"{where}: '{key}' is not a list"))
        try:
            return [parse(item) for item in items]
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise BlackBerryResponseError(self._where(f"{where}: {exc}; answer rejected")) from None

    # -- the API --------------------------------------------------------------------------------

    def test_connection(self) -> tuple[bool, str]:
        try:
            self._get("/users", USERS_MEDIA, "user search", {"offset": 0, "max": 1})
        except (BlackBerryError, ValueError) as exc:
            return False, str(exc)
        return True, "authorized; UEM answered"

    def user_pages(self) -> Iterator[list[User]]:
        """The tenant's users, a page at a time; more than ``max_users`` is an error, not a truncation."""
        self.get_conn()
        offset = 0
        while True:
            params = {"offset": offset, "max": self.page_size}
            if self.user_query:
                params["query"] = self.user_query
            label = f"users at offset {offset}"
            page = self._list(self._get("/users", USERS_MEDIA, label, params), "users", _user, label)
            yield page
            offset += len(page)
            if len(page) < self.page_size:
                return
            if offset >= self.max_users:
                raise BlackBerryResponseError(self._where(f"more than {self.max_users} users (extra 'max_users')"))

    def user_groups(self, user_guid: str) -> list[str]:
        """The names of the groups the user is a direct member of."""
        path = f"/users/{quote(user_guid, safe='')}/groups"
        label = f"groups of user {user_guid}"
        return self._list(self._get(path, GROUPS_MEDIA, label), "groups", lambda g: _req(g, "name"), label)

    def user_devices(self, user_guid: str) -> list[UserDevice]:
        path = f"/users/{quote(user_guid, safe='')}/userDevices"
        label = f"devices of user {user_guid}"
        return self._list(self._get(path, USER_DEVICES_MEDIA, label), "userDevices", _user_device, label)


# -- parsing --------------------------------------------------------------------------------------


def _req(item: Any, key: str) -> str:
    if not isinstance(item, dict):
        raise ValueError("not an object")
    value = text_value(item.get(key))
    if value is None:
        raise ValueError(f"'{key}' is missing")
    return value


def _user(item: Any) -> User:
    return User(guid=_req(item, "guid").lower(), username=_req(item, "username"),
                display_name=text_value(item.get("displayName")), email=text_value(item.get("emailAddress")))


def _strings(value: Any, key: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ValueError(f"'{key}' is not a list")
    return tuple(str(v) for v in value)


def _user_device(item: Any) -> UserDevice:
    guid = _req(item, "guid").lower()
    device = item.get("device") or {}
    if not isinstance(device, dict):
        raise ValueError("'device' is not an object")
    compliance = item.get("outOfComplianceInfo") or []
    if not isinstance(compliance, list):
        raise ValueError("'outOfComplianceInfo' is not a list")
    return UserDevice(
        guid=guid, device_guid=(text_value(device.get("guid")) or "").lower() or None,
        hardware_model=text_value(device.get("hardwareModel")),
        hardware_vendor=text_value(device.get("hardwareVendorCompanyName")), os=text_value(device.get("os")),
        os_family=text_value(device.get("osFamilyName")), os_version=text_value(device.get("osVersion")),
        ownership=text_value(device.get("ownership")), enrollment_state=text_value(item.get("enrollmentState")),
        enrollment_type=_strings(item.get("enrollmentType"), "enrollmentType"),
        compromised=bool_value(device.get("compromised")),
        out_of_compliance=tuple(sorted(str(c.get("reason")) for c in compliance if isinstance(c, dict))),
        client_version=text_value(item.get("clientVersion")), activated_at=iso_time(device.get("activationDate")),
        last_contact_at=iso_time(item.get("lastContactTime")))


def _message(response) -> str:
    """UEM's error payload (``message``, ``id``), else the reason phrase."""
    payload = json_object(response) or {}
    return str(payload.get("message") or payload.get("id") or response.reason_phrase or "")
