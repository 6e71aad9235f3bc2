"""A domain registrar's REST API (domains, their status and contacts), for DomainNameDataSyncThread.

The registrar is an Airflow connection (type ``panelflow_registrar``; ``registrar`` by default,
one per registrar account — ``registrar_accounts.conn_id`` names it): host = the API's base URL
(``https://api.registrar.example`` or a bare host with schema ``http``/``https`` and port),
password = the API key, and extras:

- ``timeout``: seconds a request may take (default 10);
- ``retries``: attempts per request when the registrar is busy or failing (default 4);
- ``backoff``: the first wait between attempts in seconds, doubling (default 1);
- ``max_retry_wait``: the longest wait, also the cap on a ``Retry-After`` (default 60);
- ``page_size``: domains per list page (default 100).

The key travels only in the ``Authorization: Bearer`` header; nothing here logs it.

API (what ``include/sandbox/registrar.py`` emulates)::

    GET /v1/domains?page=1&per_page=100
      200 {"data": [{"name", "status", "expires_at", "updated_at"}, …],
           "meta": {"page", "per_page", "total", "total_pages"}}
    GET /v1/domains/<name>
      200 {"name", "status", "expires_at", "updated_at", "nameservers": […], "locked", "auto_renew",
           "contacts": {"registrant": {"handle", "name", "organization", "email", "phone",
                                       "address": {"street", "city", "postal_code", "state", "country"}},
                        "admin": {…}, "tech": {…}, "billing": {…}}}

A 429 (honouring ``Retry-After``), a 5xx, a timeout or a lost connection is retried with backoff
(tenacity) and, once the attempts are spent, raised as :class:`RegistrarUnavailable` naming the
request, the last answer and the attempts. 401/403 is :class:`RegistrarAuthenticationError`, 404
:class:`RegistrarNotFound`, another 4xx :class:`RegistrarRequestError`, an answer that is not the
documented JSON :class:`RegistrarResponseError` — none of these retried.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote

from panelflow.hooks._extras import extra_number
from panelflow.hooks._http import HttpApiHook, RequestRefused, bool_value, error_message, iso_time, json_object, text_value

ROLES = ("registrant", "admin", "tech", "billing")
# what registrars call the same roles
_ROLE_ALIASES = {"owner": "registrant", "holder": "registrant", "administrative": "admin", "technical": "tech",
                 "billing": "billing", "registrant": "registrant", "admin": "admin", "tech": "tech"}
MAX_PAGES = 10_000


class RegistrarError(Exception):
    """Any failure to get an answer from the registrar."""


class RegistrarUnavailable(RegistrarError):
    """Busy (429), failing (5xx) or unreachable through every attempt."""


class RegistrarRequestError(RegistrarError, RequestRefused):
    """The registrar refused the request (4xx); resending it unchanged will not help."""


class RegistrarAuthenticationError(RegistrarRequestError):
    """The API key was refused: every request of this account fails the same way."""


class RegistrarNotFound(RegistrarRequestError):
    """No such domain at this registrar (account)."""


class RegistrarResponseError(RegistrarError):
    """An answer that is not what the API documents."""


@dataclass(frozen=True)
class DomainSummary:
    name: str
    status: str | None
    expires_at: datetime | None
    updated_at: datetime | None  # the registrar's last change of the domain (a detail read is due when it moves)


@dataclass(frozen=True)
class Contact:
    handle: str | None = None
    name: str | None = None
    organization: str | None = None
    email: str | None = None
    phone: str | None = None
    street: str | None = None
    city: str | None = None
    postal_code: str | None = None
    state: str | None = None
    country: str | None = None


@dataclass(frozen=True)
class DomainDetail:
    name: str
    status: str | None
    expires_at: datetime | None
    updated_at: datetime | None
    nameservers: tuple[str, ...] = ()
    locked: bool | None = None
    auto_renew: bool | None = None
    contacts: dict[str, Contact] = field(default_factory=dict)  # role → contact, roles of ROLES only


@dataclass(frozen=True)
class DomainList:
    domains: list[DomainSummary]
    complete: bool  # as many distinct domains as the registrar said it has (the list did not move meanwhile)


class RegistrarHook(HttpApiHook):
    """One ``httpx.Client`` per hook (connection reuse across a run's requests); ``close()`` it."""

    conn_name_attr = "registrar_conn_id"
    default_conn_name = "registrar"
    conn_type = "panelflow_registrar"
    hook_name = "panelflow domain registrar"

    BASE_URL_NAME = "the registrar API's base URL"
    USER_AGENT = "panelflow-registrar-sync"
    DEFAULT_TIMEOUT = 10.0
    DEFAULT_RETRIES = 4
    DEFAULT_BACKOFF = 1.0
    DEFAULT_MAX_RETRY_WAIT = 60.0
    DEFAULT_PAGE_SIZE = 100

    def __init__(self, registrar_conn_id: str = default_conn_name, *, sleep=time.sleep, **kwargs):
        super().__init__(registrar_conn_id, sleep=sleep, **kwargs)
        self._page_size = self.DEFAULT_PAGE_SIZE

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return cls._rest_form(hidden=["login"], labels={"password": "API key"}, host="https://api.registrar.example",
                              extra='{"timeout": 10, "retries": 4, "backoff": 1, "max_retry_wait": 60,'
                                    ' "page_size": 100}')

    # -- connection -----------------------------------------------------------------------------

    def base_url(self, conn) -> str:
        return self._api_url(conn)

    def _configure(self, conn, extra: dict[str, Any]) -> dict[str, str]:
        """The API key (a bearer header) and the list's page size."""
        if not conn.password:
            raise ValueError(f"connection {self.registrar_conn_id!r} has no password (the API key)")
        self._page_size = extra_number(self.registrar_conn_id, extra, "page_size", self.DEFAULT_PAGE_SIZE, kind=int,
                                       minimum=1)
        return {"Authorization": f"Bearer {conn.password}"}

    def test_connection(self) -> tuple[bool, str]:
        """Whether the registrar answers and accepts the key (one page of one domain)."""
        try:
            self._get("/v1/domains", {"page": 1, "per_page": 1})
        except (RegistrarError, ValueError) as exc:
            return False, str(exc)
        return True, "the registrar answered and accepted the key"

    # -- requests -------------------------------------------------------------------------------

    def _get(self, path: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """The JSON object at ``path``, retrying what is worth retrying."""
        where = f"registrar {self.registrar_conn_id!r}: GET {path}"
        return self._with_retries(lambda: self._once(path, params),
                                  lambda reason: RegistrarUnavailable(f"{where}: {reason}"))

    def _once(self, path: str, params: dict[str, Any] | None) -> dict[str, Any]:
        response = self._answer("GET", path, params=params)
        status = response.status_code
        if status == 200:
            payload = json_object(response)
            if payload is None:
                raise RegistrarResponseError(f"registrar {self.registrar_conn_id!r}: GET {path}: the answer is not"
                                             " a JSON object")
            return payload
        message = error_message(response)
        where = f"registrar {self.registrar_conn_id!r}: GET {path}: HTTP {status}"
        if status in (401, 403):
            raise RegistrarAuthenticationError(f"{where}: the API key was refused ({message})", http_status=status)
        if status == 404:
            raise RegistrarNotFound(f"{where}: {message}", http_status=status)
        raise RegistrarRequestError(f"{where}: {message}", http_status=status)

    # -- the API --------------------------------------------------------------------------------

    def list_domains(self) -> DomainList:
        """Every domain of the account, page by page (deduplicated by name)."""
        self.get_conn()
        per_page = self._page_size
        seen: dict[str, DomainSummary] = {}
        page, total = 1, None
        while page <= MAX_PAGES:
            payload = self._get("/v1/domains", {"page": page, "per_page": per_page})
            data, meta = payload.get("data"), payload.get("meta")
            if not isinstance(data, list) or not isinstance(meta, dict):
                raise RegistrarResponseError(f"registrar {self.registrar_conn_id!r}: page {page} of the domain list"
                                             " has no 'data' list or 'meta' object")
            for item in data:
                summary = self._summary(item)
                seen.setdefault(summary.name, summary)
            total = _int(meta.get("total"))
            pages = _int(meta.get("total_pages"))
            if pages is None or page >= pages or not data:
                break
            page += 1
        return DomainList(domains=list(seen.values()), complete=total is not None and len(seen) == total)

    def get_domain(self, name: str) -> DomainDetail:
        payload = self._get(f"/v1/domains/{quote(name, safe='')}")
        summary = self._summary(payload)
        if summary.name != name.lower():
            raise RegistrarResponseError(f"registrar {self.registrar_conn_id!r}: asked for {name}, got {summary.name}")
        nameservers = payload.get("nameservers") or []
        contacts = payload.get("contacts") or {}
        if not isinstance(nameservers, list) or not isinstance(contacts, dict):
            raise RegistrarResponseError(f"registrar {self.registrar_conn_id!r}: {name}: 'nameservers' must be a"
                                         " list and 'contacts' an object")
        parsed: dict[str, Contact] = {}
        for role, contact in contacts.items():
            role = _ROLE_ALIASES.get(str(role).lower())
            if role is None or not isinstance(contact, dict):
                continue
            address = contact.get("address") if isinstance(contact.get("address"), dict) else {}
            street = address.get("street")
            if isinstance(street, list):
                street = "\n".join(str(s) for s in street if s)
            parsed[role] = Contact(
                handle=text_value(contact.get("handle") or contact.get("id")), name=text_value(contact.get("name")),
                organization=text_value(contact.get("organization")), email=text_value(contact.get("email")),
                phone=text_value(contact.get("phone")), street=text_value(street), city=text_value(address.get("city")),
                postal_code=text_value(address.get("postal_code")), state=text_value(address.get("state")),
                country=text_value(address.get("country")))
        return DomainDetail(
            name=summary.name, status=summary.status, expires_at=summary.expires_at, updated_at=summary.updated_at,
            nameservers=tuple(dict.fromkeys(str(n).strip().lower().rstrip(".") for n in nameservers if n)),
            locked=bool_value(payload.get("locked")), auto_renew=bool_value(payload.get("auto_renew")), contacts=parsed)

    def _summary(self, item: Any) -> DomainSummary:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not item["name"].strip():
            raise RegistrarResponseError(f"registrar {self.registrar_conn_id!r}: a domain without a name:"
                                         f" {item!r:.200}")
        try:
            return DomainSummary(name=item["name"].strip().lower().rstrip("."), status=text_value(item.get("status")),
                                 expires_at=_time(item.get("expires_at")), updated_at=_time(item.get("updated_at")))
        except ValueError as exc:
            raise RegistrarResponseError(f"registrar {self.registrar_conn_id!r}: {item['name']}: {exc}") from exc


def _time(value: Any) -> datetime | None:
    if value in (None, ""):
        return None
    if isinstance(value, (int, float)):  # some registrars send epoch seconds
        return datetime.fromtimestamp(value, tz=timezone.utc)
    return iso_time(str(value))


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
