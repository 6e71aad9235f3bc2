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

from airflow.sdk import BaseHook

from panelflow.hooks._retrying_http import Retryable, RetryingHttp, base_url_of, retry_after

ROLES = ("registrant", "admin", "tech", "billing")
# what registrars call the same roles
_ROLE_ALIASES = {"owner": "registrant", "holder": "registrant", "administrative": "admin", "technical": "tech",
                 "billing": "billing", "registrant": "registrant", "admin": "admin", "tech": "tech"}
MAX_PAGES = 10_000


class RegistrarError(Exception):
    """Any failure to get an answer from the registrar."""


class RegistrarUnavailable(RegistrarError):
    """Busy (429), failing (5xx) or unreachable through every attempt."""


class RegistrarRequestError(RegistrarError):
    """The registrar refused the request (4xx); resending it unchanged will not help."""

    def __init__(self, message: str, *, http_status: int):
        super().__init__(message)
        self.http_status = http_status


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


class RegistrarHook(RetryingHttp, BaseHook):
    """One ``httpx.Client`` per hook (connection reuse across a run's requests); ``close()`` it."""

    conn_name_attr = "registrar_conn_id"
    default_conn_name = "registrar"
    conn_type = "panelflow_registrar"
    hook_name = "panelflow domain registrar"

    DEFAULT_TIMEOUT = 10.0
    DEFAULT_RETRIES = 4
    DEFAULT_BACKOFF = 1.0
    DEFAULT_MAX_RETRY_WAIT = 60.0
    DEFAULT_PAGE_SIZE = 100

    def __init__(self, registrar_conn_id: str = default_conn_name, *, sleep=time.sleep, **kwargs):
        super().__init__(**kwargs)
        self.registrar_conn_id = registrar_conn_id
        self._sleep = sleep
        self._client = None
        self._settings: dict[str, float] = {}

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return {
            "hidden_fields": ["login"],
            "relabeling": {"host": "API base URL", "password": "API key", "schema": "Scheme (http/https)"},
            "placeholders": {"host": "https://api.registrar.example", "schema": "https",
                             "extra": '{"timeout": 10, "retries": 4, "backoff": 1, "max_retry_wait": 60,'
                                      ' "page_size": 100}'},
        }

    # -- connection -----------------------------------------------------------------------------

    def base_url(self, conn) -> str:
        return base_url_of(conn, self.registrar_conn_id, missing="the registrar API's base URL")

    def get_conn(self):
        """The hook's ``httpx.Client``: base URL, bearer key and timeout from the connection."""
        if self._client is None:
            import httpx

            conn = self.get_connection(self.registrar_conn_id)
            if not conn.password:
                raise ValueError(f"connection {self.registrar_conn_id!r} has no password (the API key)")
            extra = conn.extra_dejson
            self._settings = {
                "retries": max(1, int(extra.get("retries", self.DEFAULT_RETRIES))),
                "backoff": max(0.0, float(extra.get("backoff", self.DEFAULT_BACKOFF))),
                "max_retry_wait": max(0.0, float(extra.get("max_retry_wait", self.DEFAULT_MAX_RETRY_WAIT))),
                "page_size": max(1, int(extra.get("page_size", self.DEFAULT_PAGE_SIZE))),
            }
            self._client = httpx.Client(
                base_url=self.base_url(conn),
                headers={"Authorization": f"Bearer {conn.password}", "Accept": "application/json",
                         "User-Agent": "panelflow-registrar-sync"},
                timeout=httpx.Timeout(float(extra.get("timeout", self.DEFAULT_TIMEOUT))),
                follow_redirects=False,  # a redirect would replay the key to another host
            )
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> "RegistrarHook":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

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
        client = self.get_conn()
        try:
            for attempt in self._retrying():
                with attempt:
                    return self._once(client, path, params)
        except Retryable as exc:
            raise RegistrarUnavailable(f"registrar {self.registrar_conn_id!r}: GET {path}: {exc}"
                                       f" ({self._attempts()})") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _once(self, client, path: str, params: dict[str, Any] | None) -> dict[str, Any]:
        response = self._send(client, "GET", path, params=params)
        status = response.status_code
        if status == 200:
            payload = _json(response)
            if payload is None:
                raise RegistrarResponseError(f"registrar {self.registrar_conn_id!r}: GET {path}: the answer is not"
                                             " a JSON object")
            return payload
        message = _error_message(response)
        if status == 429 or status >= 500:
            raise Retryable(f"HTTP {status} {message}".strip(), retry_after(response.headers.get("Retry-After")))
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
        per_page = int(self._settings["page_size"])
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
                handle=_text(contact.get("handle") or contact.get("id")), name=_text(contact.get("name")),
                organization=_text(contact.get("organization")), email=_text(contact.get("email")),
                phone=_text(contact.get("phone")), street=_text(street), city=_text(address.get("city")),
                postal_code=_text(address.get("postal_code")), state=_text(address.get("state")),
                country=_text(address.get("country")))
        return DomainDetail(
            name=summary.name, status=summary.status, expires_at=summary.expires_at, updated_at=summary.updated_at,
            nameservers=tuple(dict.fromkeys(str(n).strip().lower().rstrip(".") for n in nameservers if n)),
            locked=_bool(payload.get("locked")), auto_renew=_bool(payload.get("auto_renew")), contacts=parsed)

    def _summary(self, item: Any) -> DomainSummary:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not item["name"].strip():
            raise RegistrarResponseError(f"registrar {self.registrar_conn_id!r}: a domain without a name:"
                                         f" {item!r:.200}")
        try:
            return DomainSummary(name=item["name"].strip().lower().rstrip("."), status=_text(item.get("status")),
                                 expires_at=_time(item.get("expires_at")), updated_at=_time(item.get("updated_at")))
        except ValueError as exc:
            raise RegistrarResponseError(f"registrar {self.registrar_conn_id!r}: {item['name']}: {exc}") from exc


def _json(response) -> dict[str, Any] | None:
    try:
        payload = response.json()
    except ValueError:
        return None
    return payload if isinstance(payload, dict) else None


def _error_message(response) -> str:
    payload = _json(response) or {}
    error = payload.get("error")
    if isinstance(error, dict):
        return str(error.get("message") or error.get("code") or response.reason_phrase)
    return str(error or response.reason_phrase or "")



def _time(value: Any) -> datetime | None:
    if value in (None, ""):
        return None
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(value, tz=timezone.utc)
    parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def _text(value: Any) -> str | None:
    if value is None:
        return None
    value = str(value).strip()
    return value or None


def _bool(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
