"""Microsoft Partner Center's REST API (v1): customers, their subscriptions and licences, offers, orders.

One CSP profile = one partner tenant = one Airflow connection (type ``panelflow_partner_center``;
``partner_center`` by default, ``csp_profiles.conn_id`` names each profile's):

- host = the API's base URL (default ``https://api.partnercenter.microsoft.com``; a bare host takes
  schema ``http``/``https`` and port);
- login = the app's client (application) id, password = its client secret;
- extras: ``tenant_id`` (the partner's tenant, where the app signs in — required), ``authority``
  (the identity platform, default ``https://login.microsoftonline.com``), ``scope`` (default
  ``https://api.partnercenter.microsoft.com/.default``), ``timeout`` (seconds, default 30),
  ``retries`` (attempts per request, default 6), ``backoff`` (first wait in seconds, doubling;
  default 1), ``max_retry_wait`` (the longest wait, also the cap on ``Retry-After``; default 120),
  ``page_size`` (customers and offers per page, default 100).

Tokens: client credentials (``POST {authority}/{tenant_id}/oauth2/v2.0/token``), cached on the hook
until shortly before they expire, then renewed; a 401 from the API renews the token once and
resends the request — a second 401 is :class:`PartnerCenterAuthenticationError`. The secret and
the tokens travel only in the token request's body and the ``Authorization`` header; nothing here
logs them, and each token is registered with Airflow's secrets masker.

Throttling and failures: a 429 or 503 (and any 5xx, a timeout, a lost connection) is retried with
tenacity, waiting what ``Retry-After`` says, or exponentially (``backoff`` × 2ⁿ, jittered) when it
says nothing; once the attempts are spent, :class:`PartnerCenterUnavailable`. 401/403 is
:class:`PartnerCenterAuthenticationError`, 404 :class:`PartnerCenterNotFound`, another 4xx
:class:`PartnerCenterRequestError`, an answer that is not the documented JSON
:class:`PartnerCenterResponseError` naming the page — none of these retried.

Paging: collections follow ``links.next`` (its ``uri`` and ``headers``, the ``MS-ContinuationToken``
of the customer list) until there is none. A page is parsed whole before it is handed out, so a
malformed page is rejected before any of it is written.

Orders carry ``MS-RequestId``, which Partner Center uses for idempotency: the caller derives it
from what it orders, so a resend (a retry here, or a later run after a lost answer) places
nothing twice. Every request carries the hook's ``MS-CorrelationId``.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import Any, Iterator
from urllib.parse import quote, urlsplit

from airflow.sdk import BaseHook

from panelflow.hooks._retrying_http import Retryable as _Retryable
from panelflow.hooks._retrying_http import RetryingHttp as _RetryingHttpBase
from panelflow.hooks._retrying_http import base_url_of, retry_after

DEFAULT_BASE_URL = "https://api.partnercenter.microsoft.com"
DEFAULT_AUTHORITY = "https://login.microsoftonline.com"
DEFAULT_SCOPE = "https://api.partnercenter.microsoft.com/.default"
MAX_PAGES = 100_000
TOKEN_MARGIN = 120.0  # renew a token this long before it expires (at most half its lifetime)


class PartnerCenterError(Exception):
    """Any failure to get an answer from Partner Center."""


class PartnerCenterUnavailable(PartnerCenterError):
    """Throttled (429), failing (5xx) or unreachable through every attempt."""


class PartnerCenterRequestError(PartnerCenterError):
    """Partner Center refused the request (4xx); resending it unchanged will not help."""

    def __init__(self, message: str, *, http_status: int, code: Any = None):
        super().__init__(message)
        self.http_status = http_status
        self.code = code


class PartnerCenterAuthenticationError(PartnerCenterRequestError):
    """The app's credentials or its token were refused: every request of this profile fails the same way."""


class PartnerCenterNotFound(PartnerCenterRequestError):
    """No such customer, subscription or resource."""


class PartnerCenterResponseError(PartnerCenterError):
    """An answer that is not what the API documents (a malformed page)."""


# -- resources ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Customer:
    tenant_id: str
    company_name: str | None
    domain: str | None
    relationship: str | None


@dataclass(frozen=True)
class Subscription:
    id: str
    offer_id: str
    offer_name: str | None
    friendly_name: str | None
    quantity: int
    unit_type: str | None
    status: str
    auto_renew: bool | None
    billing_cycle: str | None
    term_duration: str | None
    creation_date: datetime | None
    effective_start_date: date | None
    commitment_end_date: date | None
    is_trial: bool | None
    order_id: str | None

    def as_row(self) -> dict[str, Any]:
        return {"subscription_id": self.id, "offer_id": self.offer_id, "offer_name": self.offer_name,
                "friendly_name": self.friendly_name, "quantity": self.quantity, "unit_type": self.unit_type,
                "status": self.status, "auto_renew": self.auto_renew, "billing_cycle": self.billing_cycle,
                "term_duration": self.term_duration, "creation_date": _iso(self.creation_date),
                "effective_start_date": _iso(self.effective_start_date),
                "commitment_end_date": _iso(self.commitment_end_date), "is_trial": self.is_trial,
                "order_id": self.order_id}


@dataclass(frozen=True)
class Offer:
    id: str
    name: str
    description: str | None
    category: str | None
    product_id: str | None
    product_name: str | None
    unit_type: str | None
    billing: str | None
    min_quantity: int | None
    max_quantity: int | None
    is_trial: bool | None
    is_addon: bool | None
    is_auto_renewable: bool | None
    available_for_purchase: bool | None
    billing_cycles: tuple[str, ...]
    prerequisite_offers: tuple[str, ...]
    country: str | None
    locale: str | None

    def as_row(self) -> dict[str, Any]:
        row = {k: getattr(self, k) for k in self.__dataclass_fields__}
        row["offer_id"] = row.pop("id")
        row["billing_cycles"] = list(self.billing_cycles)
        row["prerequisite_offers"] = list(self.prerequisite_offers)
        return row


@dataclass(frozen=True)
class SubscribedSku:
    sku_id: str
    name: str | None
    part_number: str | None
    active_units: int
    consumed_units: int
    suspended_units: int | None
    warning_units: int | None
    total_units: int | None
    capability_status: str | None


@dataclass(frozen=True)
class OrderLine:
    line_number: int
    offer_id: str
    subscription_id: str | None
    quantity: int | None
    friendly_name: str | None


@dataclass(frozen=True)
class Order:
    id: str
    status: str | None
    lines: tuple[OrderLine, ...]
    request_id: str
    replayed: bool  # Partner Center answered from its idempotency store: an earlier try had placed it


@dataclass(frozen=True)
class Page:
    number: int
    items: list  # parsed resources
    uri: str


# -- shared HTTP plumbing (the Azure Retail Prices hook uses it too) ------------------------------


class RetryingHttp(_RetryingHttpBase):
    """The shared retrying plumbing, plus which Partner Center / Retail Prices answers are worth retrying."""

    @staticmethod
    def _busy(response) -> _Retryable | None:
        """The retryable answers: 429 and every 5xx, with what ``Retry-After`` says."""
        if response.status_code == 429 or response.status_code >= 500:
            return _Retryable(f"HTTP {response.status_code} {error_message(response)}".strip(),
                              retry_after(response.headers.get("Retry-After")))
        return None


# -- the hook -------------------------------------------------------------------------------------


class PartnerCenterHook(RetryingHttp, BaseHook):
    """One ``httpx.Client`` and one cached token per hook (one CSP profile); ``close()`` it."""

    conn_name_attr = "partner_center_conn_id"
    default_conn_name = "partner_center"
    conn_type = "panelflow_partner_center"
    hook_name = "panelflow Microsoft Partner Center"

    DEFAULT_PAGE_SIZE = 100

    def __init__(self, partner_center_conn_id: str = default_conn_name, *, sleep=time.sleep, clock=time.monotonic,
                 **kwargs):
        super().__init__(**kwargs)
        self.partner_center_conn_id = partner_center_conn_id
        self._sleep = sleep
        self._clock = clock
        self._client = None
        self._settings = {}
        self._token_request: tuple[str, dict[str, str]] | None = None
        self._access_token: str | None = None
        self._token_expires = 0.0
        self.correlation_id = str(uuid.uuid4())
        self.tokens_acquired = 0

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return {
            "hidden_fields": [],
            "relabeling": {"host": "API base URL", "login": "Application (client) ID", "password": "Client secret",
                           "schema": "Scheme (http/https)"},
            "placeholders": {"host": DEFAULT_BASE_URL, "schema": "https",
                             "extra": '{"tenant_id": "<partner tenant id>",'
                                      ' "authority": "https://login.microsoftonline.com", "timeout": 30,'
                                      ' "retries": 6, "backoff": 1, "max_retry_wait": 120, "page_size": 100}'},
        }

    # -- connection -----------------------------------------------------------------------------

    def get_conn(self):
        """The hook's ``httpx.Client`` (base URL and timeout from the connection; the token per request)."""
        if self._client is None:
            import httpx

            cid = self.partner_center_conn_id
            conn = self.get_connection(cid)
            extra = conn.extra_dejson
            tenant = str(extra.get("tenant_id") or "").strip()
            if not conn.login or not conn.password:
                raise ValueError(f"connection {cid!r} needs login (the app's client id) and password (its secret)")
            if not tenant:
                raise ValueError(f"connection {cid!r} has no extra 'tenant_id' (the partner's tenant)")
            self._read_settings(extra)
            self._settings["page_size"] = max(1, int(extra.get("page_size", self.DEFAULT_PAGE_SIZE)))
            authority = str(extra.get("authority") or DEFAULT_AUTHORITY).rstrip("/")
            self._token_request = (f"{authority}/{quote(tenant, safe='')}/oauth2/v2.0/token", {
                "grant_type": "client_credentials", "client_id": conn.login, "client_secret": conn.password,
                "scope": str(extra.get("scope") or DEFAULT_SCOPE)})
            self.tenant_id = tenant
            self.base_url = base_url_of(conn, cid, DEFAULT_BASE_URL)
            self._client = httpx.Client(
                base_url=self.base_url, timeout=httpx.Timeout(self._settings["timeout"]),
                headers={"Accept": "application/json", "User-Agent": "panelflow-partner-center"},
                follow_redirects=False,  # a redirect would replay the token to another host
            )
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> "PartnerCenterHook":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def test_connection(self) -> tuple[bool, str]:
        """Whether the app signs in and Partner Center answers (one customer)."""
        try:
            next(iter(self._pages("/v1/customers", {"size": 1}, "customer list", _customer)), None)
        except (PartnerCenterError, ValueError) as exc:
            return False, str(exc)
        return True, "signed in; Partner Center answered"

    # -- tokens ---------------------------------------------------------------------------------

    def _token(self) -> str:
        if self._access_token is not None and self._clock() < self._token_expires:
            return self._access_token
        client = self.get_conn()
        url, form = self._token_request
        where = f"Partner Center connection {self.partner_center_conn_id!r}: sign-in to tenant {self.tenant_id}"
        try:
            for attempt in self._retrying():
                with attempt:
                    response = self._send(client, "POST", url, data=form)
                    busy = self._busy(response)
                    if busy is not None:
                        raise busy
        except _Retryable as exc:
            raise PartnerCenterUnavailable(f"{where}: {exc} ({self._attempts()})") from exc
        payload = _json_object(response)
        if response.status_code != 200:
            detail = (payload or {}).get("error_description") or (payload or {}).get("error") or response.reason_phrase
            raise PartnerCenterAuthenticationError(f"{where} refused (HTTP {response.status_code}): {detail}",
                                                   http_status=response.status_code,
                                                   code=(payload or {}).get("error"))
        token = (payload or {}).get("access_token")
        lifetime = (payload or {}).get("expires_in")
        if not isinstance(token, str) or not token or not isinstance(lifetime, (int, float, str)):
            raise PartnerCenterResponseError(f"{where}: the token answer has no access_token/expires_in")
        lifetime = float(lifetime)
        try:  # the token never reaches a log in clear, should anything print it
            from airflow.sdk.log import mask_secret

            mask_secret(token)
        except Exception:  # pragma: no cover - masking is a safeguard, not a precondition
            pass
        self._access_token = token
        self._token_expires = self._clock() + lifetime - min(TOKEN_MARGIN, lifetime / 2)
        self.tokens_acquired += 1
        return token

    # -- requests -------------------------------------------------------------------------------

    def _url(self, uri: str) -> str:
        """A ``links`` uri (``/customers?…``, relative to /v1) or a path, as a path of the base URL."""
        if "://" in uri:
            parts, base = urlsplit(uri), urlsplit(self.base_url)
            if (parts.scheme, parts.netloc) != (base.scheme, base.netloc):
                raise PartnerCenterResponseError(f"Partner Center connection {self.partner_center_conn_id!r}: a link"
                                                 f" points to another host ({parts.netloc}); not followed")
            uri = parts.path + (f"?{parts.query}" if parts.query else "")
        if not uri.startswith("/"):
            uri = "/" + uri
        return uri if uri.startswith("/v1/") else "/v1" + uri

    def request(self, method: str, path: str, *, what: str, params: dict[str, Any] | None = None,
                body: Any = None, headers: dict[str, str] | None = None):
        """The 2xx answer to ``method path`` (a token renewed once on a 401; throttling retried)."""
        client = self.get_conn()
        url = self._url(path)
        where = f"Partner Center connection {self.partner_center_conn_id!r}: {what} ({method} {url.split('?')[0]})"
        extra_headers = {"MS-CorrelationId": self.correlation_id, **(headers or {})}
        renewed = False
        try:
            for attempt in self._retrying():
                with attempt:
                    while True:
                        request_headers = {"MS-RequestId": str(uuid.uuid4()), **extra_headers,
                                           "Authorization": f"Bearer {self._token()}"}
                        response = self._send(client, method, url, params=params, headers=request_headers,
                                              **({"json": body} if body is not None else {}))
                        if response.status_code == 401 and not renewed:
                            renewed = True  # expired or revoked meanwhile: one new token, then the same request
                            self._access_token = None
                            continue
                        break
                    busy = self._busy(response)
                    if busy is not None:
                        raise busy
        except _Retryable as exc:
            raise PartnerCenterUnavailable(f"{where}: {exc} ({self._attempts()})") from exc
        status = response.status_code
        if 200 <= status < 300:
            return response
        message = error_message(response)
        code = (_json_object(response) or {}).get("code")
        if status in (401, 403):
            raise PartnerCenterAuthenticationError(f"{where}: HTTP {status}, refused even with a new token: {message}"
                                                   if status == 401 else f"{where}: HTTP 403: {message}",
                                                   http_status=status, code=code)
        if status == 404:
            raise PartnerCenterNotFound(f"{where}: HTTP 404: {message}", http_status=status, code=code)
        raise PartnerCenterRequestError(f"{where}: HTTP {status}: {message}", http_status=status, code=code)

    def _get_json(self, path: str, params: dict[str, Any] | None, what: str,
                  headers: dict[str, str] | None = None) -> dict[str, Any]:
        response = self.request("GET", path, what=what, params=params, headers=headers)
        payload = _json_object(response)
        if payload is None:
            raise PartnerCenterResponseError(f"Partner Center connection {self.partner_center_conn_id!r}: {what}:"
                                             " the answer is not a JSON object")
        return payload

    def _pages(self, path: str, params: dict[str, Any] | None, what: str, parse) -> Iterator[Page]:
        """Each page of the collection at ``path``, parsed whole (``parse(item)`` per item)."""
        uri, headers, seen = path, None, set()
        for number in range(1, MAX_PAGES + 1):
            label = f"{what}, page {number}"
            payload = self._get_json(uri, params, label, headers)
            items = payload.get("items")
            if not isinstance(items, list):
                raise PartnerCenterResponseError(f"Partner Center connection {self.partner_center_conn_id!r}:"
                                                 f" {label}: 'items' is not a list; page rejected")
            parsed = []
            for index, item in enumerate(items):
                try:
                    parsed.append(parse(item))
                except (ValueError, TypeError, KeyError, AttributeError) as exc:
                    raise PartnerCenterResponseError(
                        f"Partner Center connection {self.partner_center_conn_id!r}: {label}: item {index + 1}:"
                        f" {exc}; page rejected") from None
            yield Page(number, parsed, uri)
            nxt = (payload.get("links") or {}).get("next") if isinstance(payload.get("links"), dict) else None
            if not nxt:
                return
            if not isinstance(nxt, dict) or not isinstance(nxt.get("uri"), str):
                raise PartnerCenterResponseError(f"Partner Center connection {self.partner_center_conn_id!r}:"
                                                 f" {label}: 'links.next' has no uri")
            headers = {str(h["key"]): str(h["value"]) for h in nxt.get("headers") or []
                       if isinstance(h, dict) and "key" in h and "value" in h}
            uri, params = nxt["uri"], None
            key = (uri, tuple(sorted(headers.items())))
            if key in seen:
                raise PartnerCenterResponseError(f"Partner Center connection {self.partner_center_conn_id!r}:"
                                                 f" {label}: 'links.next' repeats an earlier page")
            seen.add(key)
        raise PartnerCenterResponseError(f"{what}: more than {MAX_PAGES} pages")

    # -- the API --------------------------------------------------------------------------------

    def customer_pages(self) -> Iterator[Page]:
        """The partner's customers, a page (``page_size``) at a time."""
        self.get_conn()
        return self._pages("/v1/customers", {"size": int(self._settings["page_size"])}, "customer list", _customer)

    def offer_pages(self, country: str) -> Iterator[Page]:
        """The offers for ``country`` (ISO 3166 alpha-2), a page at a time."""
        self.get_conn()
        return self._pages("/v1/offers", {"country": country, "offset": 0, "size": int(self._settings["page_size"])},
                           f"offers for {country}", _offer)

    def subscriptions(self, customer_id: str) -> list[Subscription]:
        out: list[Subscription] = []
        for page in self._pages(f"/v1/customers/{quote(customer_id, safe='')}/subscriptions", None,
                                f"subscriptions of customer {customer_id}", _subscription):
            out.extend(page.items)
        return out

    def subscription(self, customer_id: str, subscription_id: str) -> Subscription:
        what = f"subscription {subscription_id} of customer {customer_id}"
        payload = self._get_json(f"/v1/customers/{quote(customer_id, safe='')}/subscriptions/"
                                 f"{quote(subscription_id, safe='')}", None, what)
        try:
            sub = _subscription(payload)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise PartnerCenterResponseError(f"Partner Center connection {self.partner_center_conn_id!r}: {what}:"
                                             f" {exc}") from None
        if sub.id.lower() != subscription_id.lower():
            raise PartnerCenterResponseError(f"{what}: the answer is subscription {sub.id}")
        return sub

    def subscribed_skus(self, customer_id: str) -> list[SubscribedSku]:
        out: list[SubscribedSku] = []
        for page in self._pages(f"/v1/customers/{quote(customer_id, safe='')}/subscribedskus", None,
                                f"licences of customer {customer_id}", _sku):
            out.extend(page.items)
        return out

    def place_order(self, customer_id: str, *, request_id: str, offer_id: str, quantity: int,
                    billing_cycle: str = "monthly", friendly_name: str | None = None) -> Order:
        """Order ``quantity`` of ``offer_id`` for the customer. ``request_id`` (a GUID derived from what is
        ordered) makes it idempotent: resending it never places a second order."""
        line = {"lineItemNumber": 0, "offerId": offer_id, "quantity": quantity}
        if friendly_name:
            line["friendlyName"] = friendly_name
        body = {"referenceCustomerId": customer_id, "billingCycle": billing_cycle, "lineItems": [line],
                "attributes": {"objectType": "Order"}}
        what = f"order of {quantity} × {offer_id} for customer {customer_id} (request {request_id})"
        response = self.request("POST", f"/v1/customers/{quote(customer_id, safe='')}/orders", what=what, body=body,
                                headers={"MS-RequestId": request_id})
        payload = _json_object(response)
        try:
            if payload is None:
                raise ValueError("the answer is not a JSON object")
            lines = tuple(OrderLine(line_number=int(li.get("lineItemNumber", n)), offer_id=_req_text(li, "offerId"),
                                    subscription_id=_text(li.get("subscriptionId")), quantity=_opt_int(li, "quantity"),
                                    friendly_name=_text(li.get("friendlyName")))
                          for n, li in enumerate(payload["lineItems"]))
            return Order(id=_req_text(payload, "id"), status=_text(payload.get("status")), lines=lines,
                         request_id=request_id,
                         replayed=response.headers.get("MS-Idempotent-Replayed", "").lower() == "true")
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise PartnerCenterResponseError(f"Partner Center connection {self.partner_center_conn_id!r}: {what}:"
                                             f" {exc}") from None


# -- parsing --------------------------------------------------------------------------------------


def _customer(item: Any) -> Customer:
    if not isinstance(item, dict):
        raise ValueError("not an object")
    profile = item.get("companyProfile") if isinstance(item.get("companyProfile"), dict) else {}
    tenant = _req_text(item, "id")
    return Customer(tenant_id=tenant.lower(), company_name=_text(profile.get("companyName")),
                    domain=_text(profile.get("domain")), relationship=_text(item.get("relationshipToPartner")))


def _subscription(item: Any) -> Subscription:
    if not isinstance(item, dict):
        raise ValueError("not an object")
    quantity = item.get("quantity")
    if not isinstance(quantity, int) or isinstance(quantity, bool) or quantity < 0:
        raise ValueError(f"'quantity' is not a count: {quantity!r}")
    return Subscription(
        id=_req_text(item, "id").lower(), offer_id=_req_text(item, "offerId"), offer_name=_text(item.get("offerName")),
        friendly_name=_text(item.get("friendlyName")), quantity=quantity, unit_type=_text(item.get("unitType")),
        status=_req_text(item, "status").lower(), auto_renew=_bool(item.get("autoRenewEnabled")),
        billing_cycle=_text(item.get("billingCycle")), term_duration=_text(item.get("termDuration")),
        creation_date=_time(item.get("creationDate")), effective_start_date=_date(item.get("effectiveStartDate")),
        commitment_end_date=_date(item.get("commitmentEndDate")), is_trial=_bool(item.get("isTrial")),
        order_id=_text(item.get("orderId")))


def _offer(item: Any) -> Offer:
    if not isinstance(item, dict):
        raise ValueError("not an object")
    category = item.get("category") if isinstance(item.get("category"), dict) else {}
    product = item.get("product") if isinstance(item.get("product"), dict) else {}
    prerequisites = item.get("prerequisiteOffers") or []
    cycles = item.get("supportedBillingCycles") or []
    if not isinstance(prerequisites, list) or not isinstance(cycles, list):
        raise ValueError("'prerequisiteOffers' and 'supportedBillingCycles' must be lists")
    return Offer(
        id=_req_text(item, "id"), name=_req_text(item, "name"), description=_text(item.get("description")),
        category=_text(category.get("name") or category.get("id")), product_id=_text(product.get("id")),
        product_name=_text(product.get("name")), unit_type=_text(item.get("unitType") or product.get("unit")),
        billing=_text(item.get("billing")), min_quantity=_opt_int(item, "minimumQuantity"),
        max_quantity=_opt_int(item, "maximumQuantity"), is_trial=_bool(item.get("isTrial")),
        is_addon=_bool(item.get("isAddOn")), is_auto_renewable=_bool(item.get("isAutoRenewable")),
        available_for_purchase=_bool(item.get("isAvailableForPurchase")),
        billing_cycles=tuple(str(c) for c in cycles),
        prerequisite_offers=tuple(str(p.get("id") if isinstance(p, dict) else p) for p in prerequisites),
        country=_text(item.get("country")), locale=_text(item.get("locale")))


def _sku(item: Any) -> SubscribedSku:
    if not isinstance(item, dict) or not isinstance(item.get("productSku"), dict):
        raise ValueError("no 'productSku' object")
    sku = item["productSku"]
    active, consumed = _opt_int(item, "activeUnits"), _opt_int(item, "consumedUnits")
    if active is None or consumed is None:
        raise ValueError("'activeUnits' and 'consumedUnits' are required")
    return SubscribedSku(sku_id=_req_text(sku, "id").lower(), name=_text(sku.get("name")),
                         part_number=_text(sku.get("skuPartNumber")), active_units=active, consumed_units=consumed,
                         suspended_units=_opt_int(item, "suspendedUnits"), warning_units=_opt_int(item, "warningUnits"),
                         total_units=_opt_int(item, "totalUnits"),
                         capability_status=_text(item.get("capabilityStatus")))


# -- small helpers (shared with the Azure Retail Prices hook) --------------------------------------


def _json_object(response, **loads) -> dict[str, Any] | None:
    try:
        payload = json.loads(response.content, **loads) if response.content else None
    except ValueError:
        return None
    return payload if isinstance(payload, dict) else None


def error_message(response) -> str:
    payload = _json_object(response) or {}
    error = payload.get("error") or payload.get("Error")
    if isinstance(error, dict):
        return str(error.get("message") or error.get("Message") or error.get("code") or response.reason_phrase)
    return str(payload.get("description") or payload.get("error_description") or error or response.reason_phrase
               or "")


def _iso(value) -> str | None:
    return value.isoformat() if value is not None else None


def _text(value: Any) -> str | None:
    if value is None:
        return None
    value = str(value).strip()
    return value or None


def _req_text(item: dict, key: str) -> str:
    value = item.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"'{key}' is missing or not a string")
    return value.strip()


def _bool(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


def _opt_int(item: dict, key: str) -> int | None:
    value = item.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, Decimal)) or value != int(value):
        raise ValueError(f"'{key}' is not a whole number: {value!r}")
    return int(value)


def _time(value: Any) -> datetime | None:
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise ValueError(f"not a date/time: {value!r}")
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def _date(value: Any) -> date | None:
    moment = _time(value)
    return moment.astimezone(timezone.utc).date() if moment is not None else None
