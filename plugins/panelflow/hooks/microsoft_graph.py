"""Microsoft Graph for panelflow: the azure provider's ``KiotaRequestAdapterHook`` with the
policies a directory sync needs (Office365SyncWork, O365SyncAdminLogsWork).

**One Airflow connection per customer tenant** (type ``msgraph``, the provider's own shape): a
``m365_tenants`` row names its ``conn_id``. login = the app's client id, password = its client
secret, extra ``tenant_id`` = the customer tenant. Everything else is the provider's: extra
``base_url`` (default ``https://graph.microsoft.com/v1.0``), ``authority`` (the identity
platform's host, default ``login.microsoftonline.com``), ``allowed_hosts`` (the hosts the token
is sent to), ``proxies``, ``verify``, ``scopes``. A partner (CSP) app that reaches many customer
tenants is one connection per tenant with the same login/password and that tenant's
``tenant_id``: the provider caches its request adapter by connection id, so one connection must
mean one tenant. panelflow's own extras (all optional): ``timeout`` (seconds per request, 60),
``max_retries`` (retries of one request after throttling or a transport error, 8),
``backoff`` (first exponential backoff, seconds, 1), ``backoff_max`` (60) and
``max_retry_after`` (the longest Retry-After honoured, seconds, 300).

Credentials. With an ``https`` authority (production) the provider's ``ClientSecretCredential``
(azure-identity) gets the token and caches and renews it. azure-identity refuses any authority
that is not ``https`` ("must be a TLS protected (https) URL"), so for a plain ``http`` authority
on a loopback host — only the sandbox — :class:`ClientCredentialsToken` does the same
client-credentials grant against ``{authority}/{tenant_id}/oauth2/v2.0/token`` with the same
contract (``get_token`` → ``AccessToken``), cached per (authority, tenant, client id, scopes) in
the process and renewed five minutes before it expires (half way for a shorter-lived token).
Plain ``http`` to any other host is refused: a client secret never travels unencrypted.

Policies, applied to every request here (the kiota retry middleware is switched off per
request, so there is exactly one retry policy and it is counted):

- 401: the token is dropped (the cached adapter closed, the credential's cache entry forgotten)
  and the request resent once with a new token; a second 401 is :class:`GraphAuthenticationError`;
- 429 / 503 / 504 (and other 5xx, transport errors): wait ``Retry-After`` when the answer has
  one, else exponential backoff with jitter; at most ``max_retries`` retries, then
  :class:`GraphUnavailable`;
- 410 (``syncStateNotFound`` / ``resyncRequired``): :class:`DeltaExpired` — start a new round;
- other 4xx: :class:`GraphRequestRejected`; a token request refused: :class:`GraphAuthenticationError`;
- a 200 whose body is not JSON, not an object, has no ``value`` list (for collections), an item
  that is not an object with a string ``id``, or a paging link to a host the connection does
  not allow: :class:`GraphMalformedResponse`, naming the URL.

Paging: :meth:`MicrosoftGraphHook.pages` follows ``@odata.nextLink`` and hands each page over
with its ``@odata.deltaLink`` (the last page of a delta round). Pages keep their raw bytes, so a
writer can give the page to PostgreSQL as it came (``jsonb``) without serialising it again.

The hook is asynchronous (the provider's is): use it inside one event loop and ``await
hook.aclose()`` in that loop when done — the adapter's HTTP client belongs to the loop.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import random
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlparse

from airflow.providers.microsoft.azure.hooks.msgraph import CachedAsyncTokenCredential, KiotaRequestAdapterHook


class GraphError(Exception):
    """Any failure to read from Microsoft Graph."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None, url: str | None = None):
        super().__init__(message)
        self.status, self.code, self.url = status, code, url


class GraphAuthenticationError(GraphError):
    """The tenant's credentials were refused, or a fresh token was refused too."""


class GraphRequestRejected(GraphError):
    """A 4xx other than 401/429: resending the same request will not help."""


class DeltaExpired(GraphRequestRejected):
    """The deltaLink is no longer valid (410): the next round must start from scratch."""


class GraphUnavailable(GraphError):
    """Still throttled, failing (5xx) or unreachable after the allowed retries."""


class GraphMalformedResponse(GraphError):
    """A 200 whose body is not what Graph sends: the page is rejected as a whole."""


@dataclass
class Page:
    url: str
    body: dict
    raw: bytes
    number: int = 1

    @property
    def value(self) -> list[dict]:
        return self.body["value"]

    @property
    def next_link(self) -> str | None:
        return self.body.get("@odata.nextLink")

    @property
    def delta_link(self) -> str | None:
        return self.body.get("@odata.deltaLink")


@dataclass
class GraphStats:
    requests: int = 0
    pages: int = 0
    throttled: int = 0
    retried: int = 0
    waited_seconds: float = 0.0
    token_refreshes: int = 0
    by_status: dict = field(default_factory=dict)


# -- credentials ---------------------------------------------------------------------------------

_TOKENS: dict[tuple, tuple[Any, float]] = {}   # (token url, client id, scopes) → (AccessToken, renew at)
_TOKENS_LOCK = threading.Lock()
RENEW_BEFORE = 300      # seconds before expiry a cached token is renewed (half its life if it is shorter)


def _is_loopback(host: str | None) -> bool:
    if host in (None, ""):
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class ClientCredentialsToken:
    """OAuth2 client-credentials against ``{authority}/{tenant}/oauth2/v2.0/token`` (async).

    What ``ClientSecretCredential`` does, for the loopback authority azure-identity refuses:
    the token is cached in the process and renewed ``RENEW_BEFORE`` seconds before it expires
    (half way through its life if that is shorter); ``forget()`` drops it (after a 401).
    """

    def __init__(self, authority: str, tenant_id: str, client_id: str, client_secret: str, *, timeout: float = 30):
        parsed = urlparse(authority)
        if parsed.scheme != "http" or not _is_loopback(parsed.hostname):
            raise ValueError(f"plain-http authority {authority!r} refused: only a loopback sandbox may be plain http")
        if not tenant_id or not client_id or not client_secret:
            raise ValueError("tenant_id (extra), client id (login) and client secret (password) are all required")
        self.token_url = f"{authority.rstrip('/')}/{tenant_id}/oauth2/v2.0/token"
        self.client_id, self._secret, self.timeout = client_id, client_secret, timeout
        self.issued = 0
        self._closed = False

    def _key(self, scopes) -> tuple:
        return (self.token_url, self.client_id, tuple(scopes))

    async def get_token(self, *scopes: str, **kwargs):
        from azure.core.credentials import AccessToken

        key = self._key(scopes)
        with _TOKENS_LOCK:
            cached = _TOKENS.get(key)
        if cached is not None and time.time() < cached[1]:
            return cached[0]
        import httpx
        from azure.core.exceptions import ClientAuthenticationError, ServiceRequestError

        form = {"grant_type": "client_credentials", "client_id": self.client_id, "client_secret": self._secret,
                "scope": " ".join(scopes)}
        try:
            async with httpx.AsyncClient(timeout=self.timeout, trust_env=False) as client:
                resp = await client.post(self.token_url, data=form, headers={"Accept": "application/json"})
        except httpx.TransportError as exc:
            raise ServiceRequestError(f"token endpoint unreachable: {exc!r}") from exc
        if resp.status_code >= 500 or resp.status_code == 429:
            raise ServiceRequestError(f"token endpoint answered {resp.status_code}")
        try:
            body = resp.json()
        except ValueError:
            body = {}
        if resp.status_code != 200 or "access_token" not in body:
            detail = body.get("error_description") or body.get("error") or resp.text[:200]
            raise ClientAuthenticationError(message=f"token request refused ({resp.status_code}): {detail}")
        now = time.time()
        lifetime = float(body.get("expires_in", 3600))
        token = AccessToken(body["access_token"], int(now + lifetime))
        with _TOKENS_LOCK:
            _TOKENS[key] = (token, now + lifetime - min(RENEW_BEFORE, lifetime / 2))
        self.issued += 1
        return token

    async def get_token_info(self, *scopes: str, **kwargs):
        return await self.get_token(*scopes)

    def forget(self) -> None:
        with _TOKENS_LOCK:
            for key in [k for k in _TOKENS if k[0] == self.token_url and k[1] == self.client_id]:
                del _TOKENS[key]

    async def close(self) -> None:
        self._closed = True


class _KeptCredential(CachedAsyncTokenCredential):
    """The provider's wrapper (kiota must not close it), with a ``closed`` that fits our credential."""

    @property
    def closed(self) -> bool:
        return getattr(self._credential, "_closed", False)


# -- the hook ------------------------------------------------------------------------------------

RETRY_STATUSES = {429, 500, 502, 503, 504}


class MicrosoftGraphHook(KiotaRequestAdapterHook):
    """One customer tenant's Graph, through its ``msgraph`` connection (see the module's doc)."""

    conn_type = "msgraph"
    default_conn_name = "msgraph_default"
    hook_name = "panelflow Microsoft Graph (one tenant)"

    DEFAULTS = {"timeout": 60.0, "max_retries": 8, "backoff": 1.0, "backoff_max": 60.0, "max_retry_after": 300.0}

    def __init__(self, conn_id: str = default_conn_name, **kwargs):
        kwargs.setdefault("timeout", self.DEFAULTS["timeout"])
        super().__init__(conn_id=conn_id, **kwargs)
        self.stats = GraphStats()
        self.policy = dict(self.DEFAULTS)
        self.tenant_id: str | None = None
        self._credential = None
        self._sleep = asyncio.sleep

    # -- connection and credentials (the provider builds the adapter) --------------------------

    def _build_request_adapter(self, connection, config: dict[str, Any]):
        for key, default in self.DEFAULTS.items():
            if config.get(key) not in (None, ""):
                self.policy[key] = type(default)(config[key])
        self.timeout = self.policy["timeout"]
        self.tenant_id = config.get("tenant_id") or config.get("tenantId")
        api_version, adapter = super()._build_request_adapter(connection, config)
        adapter._panelflow_loop = asyncio.get_running_loop()
        return api_version, adapter

    def get_credentials(self, login, password, config, authority, verify, proxies):
        if authority and urlparse(authority).scheme == "http":
            cred = ClientCredentialsToken(authority, config.get("tenant_id") or config.get("tenantId"), login, password,
                                          timeout=self.policy["timeout"])
            self._credential = cred
            return _KeptCredential(cred)
        self._credential = None
        return super().get_credentials(login=login, password=password, config=config, authority=authority,
                                       verify=verify, proxies=proxies)

    async def _drop_token(self) -> None:
        if self._credential is not None:
            self._credential.forget()
        await self.close()

    async def aclose(self) -> None:
        await self.close()

    async def __aenter__(self) -> "MicrosoftGraphHook":
        # An adapter left cached by a loop that has ended (its owner never closed it) is unusable:
        # its HTTP client belongs to that loop. One connection is one tenant, synced by one task.
        stale = self.cached_request_adapters.get(self.conn_id)
        if stale is not None and not self._owned_by_running_loop(stale[1]):
            self.cached_request_adapters.pop(self.conn_id, None)
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    @staticmethod
    def _owned_by_running_loop(adapter) -> bool:
        return getattr(adapter, "_panelflow_loop", None) is asyncio.get_running_loop()

    # -- one request ---------------------------------------------------------------------------

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        if retry_after:
            try:
                seconds = float(retry_after)
            except ValueError:
                try:
                    seconds = parsedate_to_datetime(retry_after).timestamp() - time.time()
                except (TypeError, ValueError):
                    seconds = None
            if seconds is not None:
                return min(max(seconds, 0.0), self.policy["max_retry_after"])
        base = self.policy["backoff"] * (2 ** attempt)
        return min(base, self.policy["backoff_max"]) * (0.5 + random.random() / 2)

    async def get(self, url: str, *, headers: dict[str, str] | None = None, collection: bool = True) -> Page:
        """GET one URL (relative to ``base_url`` or absolute) with the policies above → :class:`Page`."""
        status, full, content = await self._exchange("GET", url, headers=headers, accept=lambda s: s == 200,
                                                     delta_aware=True, name_method=False)
        return self._page(full, content, collection)

    async def _exchange(self, method: str, url: str, *, headers: dict[str, str] | None = None,
                        body: dict | None = None, accept, delta_aware: bool = False,
                        name_method: bool = True) -> tuple[int, str, bytes]:
        """One request under the policies above, until a status ``accept`` takes → (status, full URL, body).

        401: one new token, then an error; 429/5xx/transport errors: retried with Retry-After or
        backoff, bounded; anything else: :class:`GraphRequestRejected` (:class:`DeltaExpired` for an
        expired delta link when ``delta_aware``). Errors name ``method url`` (just the URL: ``name_method=False``).
        """
        import httpx
        from azure.core.exceptions import ClientAuthenticationError, ServiceRequestError
        from kiota_http.middleware.options import ResponseHandlerOption, RetryHandlerOption

        refreshed = False
        attempt = 0
        while True:
            try:
                adapter = await self.get_async_conn()
            except ValueError as exc:    # e.g. a plain-http authority that is not loopback
                raise GraphAuthenticationError(f"{self.conn_id}: {exc}") from exc
            full = url if url.startswith("http") else adapter.base_url.rstrip("/") + "/" + url.lstrip("/")
            where = f"{method} {full}" if name_method else full
            try:
                await self.assert_allowed_host(full)
            except ValueError as exc:
                raise GraphMalformedResponse(f"{self.conn_id}: {exc}", url=full) from exc
            info = self.request_information(url=full, method=method, headers=headers, data=body)
            info.request_options[ResponseHandlerOption.get_key()] = ResponseHandlerOption(_RawHandler())
            info.add_request_options([RetryHandlerOption(should_retry=False)])
            self.stats.requests += 1
            try:
                status, resp_headers, content = await adapter.send_no_response_content_async(info, None)
            except ClientAuthenticationError as exc:
                raise GraphAuthenticationError(
                    f"{self.conn_id}: tenant {self.tenant_id}: credentials refused: {exc.message}", url=full) from exc
            except (httpx.TransportError, ServiceRequestError) as exc:
                status, resp_headers, content = None, {}, repr(exc).encode()
            self.stats.by_status[status] = self.stats.by_status.get(status, 0) + 1
            if status is not None and accept(status):
                return status, full, content
            if status == 401:
                if refreshed:
                    raise GraphAuthenticationError(
                        f"{self.conn_id}: tenant {self.tenant_id}: 401 again with a fresh token: {_message(content)}",
                        status=401, url=full)
                refreshed = True
                self.stats.token_refreshes += 1
                await self._drop_token()
                continue
            if status is None or status in RETRY_STATUSES:
                if status in (429, 503):
                    self.stats.throttled += 1
                if attempt >= self.policy["max_retries"]:
                    raise GraphUnavailable(
                        f"{self.conn_id}: {status or 'no answer'} after {attempt + 1} tries of {where}: "
                        f"{_message(content)}", status=status, url=full)
                wait = self._delay(attempt, resp_headers.get("retry-after"))
                attempt += 1
                self.stats.retried += 1
                self.stats.waited_seconds += wait
                await self._sleep(wait)
                continue
            code, message = _error_of(content)
            expired = delta_aware and (status == 410 or code in ("syncStateNotFound", "resyncRequired"))
            cls = DeltaExpired if expired else GraphRequestRejected
            raise cls(f"{self.conn_id}: {status} {code or ''} for {where}: {message}", status=status, code=code, url=full)

    def _page(self, url: str, content: bytes, collection: bool) -> Page:
        try:
            body = json.loads(content)
        except ValueError as exc:
            raise GraphMalformedResponse(f"{self.conn_id}: page {url} is not JSON ({exc}); "
                                         f"{len(content)} bytes", url=url) from exc
        if not isinstance(body, dict):
            raise GraphMalformedResponse(f"{self.conn_id}: page {url} is a JSON {type(body).__name__}, not an object",
                                         url=url)
        if collection:
            value = body.get("value")
            if not isinstance(value, list):
                raise GraphMalformedResponse(f"{self.conn_id}: page {url} has no 'value' list", url=url)
            for i, item in enumerate(value):
                if not isinstance(item, dict) or not isinstance(item.get("id"), str) or not item["id"]:
                    raise GraphMalformedResponse(
                        f"{self.conn_id}: page {url}: item {i} has no string 'id' "
                        f"({json.dumps(item)[:120] if isinstance(item, dict) else type(item).__name__})", url=url)
            for link in ("@odata.nextLink", "@odata.deltaLink"):
                if link in body and not (isinstance(body[link], str) and body[link].startswith("http")):
                    raise GraphMalformedResponse(f"{self.conn_id}: page {url}: {link} is not a URL", url=url)
        self.stats.pages += 1
        return Page(url, body, content)

    # -- paging --------------------------------------------------------------------------------

    async def pages(self, url: str, *, headers: dict[str, str] | None = None) -> AsyncIterator[Page]:
        """Every page from ``url`` on, following ``@odata.nextLink`` (the last one may carry a deltaLink)."""
        number = 0
        while url:
            page = await self.get(url, headers=headers)
            number += 1
            page.number = number
            yield page
            url = page.next_link


class _RawHandler:
    """Kiota response handler: (status, headers, bytes), never raising — the hook decides."""

    async def handle_response_async(self, response, error_map):
        content = await response.aread() if not response.is_stream_consumed else response.content
        return response.status_code, response.headers, content


def _error_of(content: bytes) -> tuple[str | None, str]:
    try:
        err = json.loads(content).get("error")
    except (ValueError, AttributeError):
        return None, content[:200].decode("utf-8", "replace")
    if isinstance(err, dict):
        return err.get("code"), str(err.get("message") or "")[:300]
    return (str(err) if err else None), ""


def _message(content: bytes) -> str:
    code, message = _error_of(content)
    return f"{code}: {message}" if code else message


# -- writes and tokens (Office365Work) -------------------------------------------------------------

@dataclass
class Answer:
    """A non-GET request's answer: its 2xx status and JSON body (None for an empty 204)."""
    status: int
    body: dict | None


async def _send(self: MicrosoftGraphHook, method: str, url: str, *, body: dict | None = None,
                headers: dict[str, str] | None = None) -> Answer:
    """``method`` on one URL with the same policies as :meth:`MicrosoftGraphHook.get` (401: one new token;
    429/5xx/transport errors: retried with Retry-After or backoff; another 4xx: :class:`GraphRequestRejected`
    with its status and Graph's error code) → :class:`Answer`.

    A retried POST may have been applied by Graph although its answer was lost: callers make their writes
    idempotent by a natural key (a user's userPrincipalName, a member already present) — see
    :mod:`panelflow.steps.microsoft365.jobs`.
    """
    status, full, content = await self._exchange(method, url, headers=headers, body=body,
                                                 accept=lambda s: 200 <= s < 300)
    if not content:
        return Answer(status, None)
    try:
        parsed = json.loads(content)
    except ValueError as exc:
        raise GraphMalformedResponse(f"{self.conn_id}: {method} {full}: answer is not JSON ({exc})", url=full) from exc
    if not isinstance(parsed, dict):
        raise GraphMalformedResponse(f"{self.conn_id}: {method} {full}: answer is not a JSON object", url=full)
    return Answer(status, parsed)


async def _renew_token(self: MicrosoftGraphHook):
    """A token for this tenant through its connection, renewed now (the cached one dropped first when the
    credential is panelflow's loopback one; azure-identity renews its own before expiry) → ``AccessToken``
    (``.token``, ``.expires_on`` epoch seconds). Refused credentials: :class:`GraphAuthenticationError`;
    token endpoint unreachable: :class:`GraphUnavailable`."""
    from azure.core.exceptions import ClientAuthenticationError, ServiceRequestError

    try:
        adapter = await self.get_async_conn()
    except ValueError as exc:
        raise GraphAuthenticationError(f"{self.conn_id}: {exc}") from exc
    provider = adapter._authentication_provider.access_token_provider
    if self._credential is not None:
        self._credential.forget()
    try:
        token = await provider._credentials.get_token(*provider._scopes)
    except ClientAuthenticationError as exc:
        raise GraphAuthenticationError(
            f"{self.conn_id}: tenant {self.tenant_id}: credentials refused: {exc.message}") from exc
    except ServiceRequestError as exc:
        raise GraphUnavailable(f"{self.conn_id}: tenant {self.tenant_id}: token endpoint: {exc}") from exc
    self.stats.token_refreshes += 1
    return token


def forget_cached_tokens(tenant_id: str) -> int:
    """Drop the process's cached loopback tokens of one tenant (any app, any scope) → how many."""
    part = f"/{tenant_id}/oauth2/"
    with _TOKENS_LOCK:
        keys = [k for k in _TOKENS if part in k[0]]
        for k in keys:
            del _TOKENS[k]
    return len(keys)


MicrosoftGraphHook.send = _send
MicrosoftGraphHook.renew_token = _renew_token


# -- usage reports (UsageReportWork) -----------------------------------------------------------------

async def _report_csv(self: MicrosoftGraphHook, url: str) -> str:
    """A Microsoft 365 usage report (``reports/get…(period='D30')``) as its CSV text.

    Graph answers a report request with ``302 Found`` and a pre-authenticated download URL; the
    adapter's redirect middleware follows it (and drops the token when the download host is another
    origin, which needs none), so the same policies as :meth:`MicrosoftGraphHook.get` apply to the
    request and the answer is the CSV, whose UTF-8 byte-order mark is removed here.
    """
    _status, full, content = await self._exchange("GET", url, accept=lambda s: s == 200, name_method=False)
    try:
        return content.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise GraphMalformedResponse(f"{self.conn_id}: report {full} is not UTF-8 text ({exc})", url=full) from exc


MicrosoftGraphHook.report_csv = _report_csv
