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
  ``page_size`` (customers and offers per page, default 100), ``pricing_url`` (the partner pricing API,
  another host: default ``https://api.partner.microsoft.com`` when the connection's host is Partner
  Center's own, else that host — a sandbox or a proxy serving both) and ``pricing_scope`` (its
  token's audience, default ``https://api.partner.microsoft.com/.default``).

Price sheets (:meth:`PartnerCenterHook.price_sheet`): Microsoft's "Get a price sheet",
``GET {pricing_url}/v1.0/sales/pricesheets(Market='{market}',PricesheetView='{view}')/$value``
(``timeline`` current/history/future, ``month`` YYYYMM for history), answered with the sheet as a CSV
file. Microsoft documents it for app+user tokens only; a profile whose app is refused there (401/403)
fails that profile's import, named, like any refused request.

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

import time
import uuid
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Iterator
from urllib.parse import quote, urlsplit

from panelflow.hooks._extras import extra_number
from panelflow.hooks._http import (
    HttpApiHook,
    RequestRefused,
    bool_value,
    error_message,
    iso_date,
    iso_time,
    json_object,
    oauth_token,
    text_value,
)

DEFAULT_BASE_URL = "https://api.partnercenter.microsoft.com"
DEFAULT_AUTHORITY = "https://login.microsoftonline.com"
DEFAULT_SCOPE = "https://api.partnercenter.microsoft.com/.default"
DEFAULT_PRICING_URL = "https://api.partner.microsoft.com"
DEFAULT_PRICING_SCOPE = "https://api.partner.microsoft.com/.default"
MAX_PAGES = 100_000
TOKEN_MARGIN = 120.0  # renew a token this long before it expires (at most half its lifetime)


class PartnerCenterError(Exception):
    """Any failure to get an answer from Partner Center."""


class PartnerCenterUnavailable(PartnerCenterError):
    """Throttled (429), failing (5xx) or unreachable through every attempt."""


class PartnerCenterRequestError(PartnerCenterError, RequestRefused):
    """Partner Center refused the request (4xx); resending it unchanged will not help."""


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


# -- the hook -------------------------------------------------------------------------------------


class PartnerCenterHook(HttpApiHook):
    """One ``httpx.Client`` and one cached token per hook (one CSP profile); ``close()`` it."""

    conn_name_attr = "partner_center_conn_id"
    default_conn_name = "partner_center"
    conn_type = "panelflow_partner_center"
    hook_name = "panelflow Microsoft Partner Center"

    DEFAULT_BASE_URL = DEFAULT_BASE_URL
    USER_AGENT = "panelflow-partner-center"
    DEFAULT_PAGE_SIZE = 100

    def __init__(self, partner_center_conn_id: str = default_conn_name, *, sleep=time.sleep, clock=time.monotonic,
                 **kwargs):
        super().__init__(partner_center_conn_id, sleep=sleep, **kwargs)
        self._clock = clock
        self._page_size = self.DEFAULT_PAGE_SIZE
        self._token_request: tuple[str, dict[str, str]] | None = None
        self._tokens: dict[str, tuple[str, float]] = {}   # scope → (token, renew after)
        self._pricing: tuple[str | None, str] = (None, DEFAULT_PRICING_SCOPE)
        self.correlation_id = str(uuid.uuid4())
        self.tokens_acquired = 0

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return cls._rest_form(hidden=[], labels={"login": "Application (client) ID", "password": "Client secret"},
                              host=DEFAULT_BASE_URL,
                              extra='{"tenant_id": "<partner tenant id>",'
                                    ' "authority": "https://login.microsoftonline.com", "timeout": 30,'
                                    ' "retries": 6, "backoff": 1, "max_retry_wait": 120, "page_size": 100}')

    # -- connection -----------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return self.settings.base_url

    def _configure(self, conn, extra: dict[str, Any]) -> dict[str, str]:
        """The app's credentials and tenant (the token is per request, not a client header)."""
        cid = self.partner_center_conn_id
        tenant = str(extra.get("tenant_id") or "").strip()
        if not conn.login or not conn.password:
            raise ValueError(f"connection {cid!r} needs login (the app's client id) and password (its secret)")
        if not tenant:
            raise ValueError(f"connection {cid!r} has no extra 'tenant_id' (the partner's tenant)")
        self._page_size = extra_number(cid, extra, "page_size", self.DEFAULT_PAGE_SIZE, kind=int, minimum=1)
        authority = str(extra.get("authority") or DEFAULT_AUTHORITY).rstrip("/")
        self._token_request = (f"{authority}/{quote(tenant, safe='')}/oauth2/v2.0/token", {
            "grant_type": "client_credentials", "client_id": conn.login, "client_secret": conn.password,
            "scope": str(extra.get("scope") or DEFAULT_SCOPE)})
        self._pricing = (str(extra["pricing_url"]).rstrip("/") if extra.get("pricing_url") else None,
                         str(extra.get("pricing_scope") or DEFAULT_PRICING_SCOPE))
        self.tenant_id = tenant
        return {}

    def test_connection(self) -> tuple[bool, str]:
        """Whether the app signs in and Partner Center answers (one customer)."""
        try:
            next(iter(self._pages("/v1/customers", {"size": 1}, "customer list", _customer)), None)
        except (PartnerCenterError, ValueError) as exc:
            return False, str(exc)
        return True, "signed in; Partner Center answered"

    # -- tokens ---------------------------------------------------------------------------------

    def _token(self, scope: str | None = None) -> str:
        """A token for ``scope`` (default: Partner Center's own API), cached until shortly before it expires."""
        self.get_conn()
        url, form = self._token_request
        scope = scope or form["scope"]
        cached = self._tokens.get(scope)
        if cached is not None and self._clock() < cached[1]:
            return cached[0]
        form = {**form, "scope": scope}
        where = f"Partner Center connection {self.partner_center_conn_id!r}: sign-in to tenant {self.tenant_id}"
        response = self._with_retries(lambda: self._answer("POST", url, data=form), self._unavailable(where))
        token, lifetime = oauth_token(response, where, refused=PartnerCenterAuthenticationError,
                                      malformed=PartnerCenterResponseError)
        self._tokens[scope] = (token, self._clock() + lifetime - min(TOKEN_MARGIN, lifetime / 2))
        self.tokens_acquired += 1
        return token

    # -- requests -------------------------------------------------------------------------------

    @staticmethod
    def _unavailable(where: str):
        return lambda reason: PartnerCenterUnavailable(f"{where}: {reason}")

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
                body: Any = None, headers: dict[str, str] | None = None, pricing: bool = False):
        """The 2xx answer to ``method path`` (a token renewed once on a 401; throttling retried).
        ``pricing``: ``path`` is on the partner pricing API (``pricing_url``, its own token audience)."""
        self.get_conn()
        url = self._pricing_url() + path if pricing else self._url(path)
        scope = self._pricing[1] if pricing else None
        where = f"Partner Center connection {self.partner_center_conn_id!r}: {what} ({method} {url.split('?')[0]})"
        extra_headers = {"MS-CorrelationId": self.correlation_id, **(headers or {})}
        renewed = False

        def attempt():
            nonlocal renewed
            while True:
                request_headers = {"MS-RequestId": str(uuid.uuid4()), **extra_headers,
                                   "Authorization": f"Bearer {self._token(scope)}"}
                response = self._send(self._client, method, url, params=params, headers=request_headers,
                                      **({"json": body} if body is not None else {}))
                if response.status_code == 401 and not renewed:
                    renewed = True  # expired or revoked meanwhile: one new token, then the same request
                    self._tokens.pop(scope or self._token_request[1]["scope"], None)
                    continue
                self._raise_if_busy(response)
                return response

        response = self._with_retries(attempt, self._unavailable(where))
        status = response.status_code
        if 200 <= status < 300:
            return response
        message = error_message(response)
        code = (json_object(response) or {}).get("code")
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
        payload = json_object(response)
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
        return self._pages("/v1/customers", {"size": self._page_size}, "customer list", _customer)

    def offer_pages(self, country: str) -> Iterator[Page]:
        """The offers for ``country`` (ISO 3166 alpha-2), a page at a time."""
        self.get_conn()
        return self._pages("/v1/offers", {"country": country, "offset": 0, "size": self._page_size},
                           f"offers for {country}", _offer)

    def _collection(self, path: str, what: str, parse) -> list:
        """Every item of every page of a collection that is read whole."""
        return [item for page in self._pages(path, None, what, parse) for item in page.items]

    def subscriptions(self, customer_id: str) -> list[Subscription]:
        return self._collection(f"/v1/customers/{quote(customer_id, safe='')}/subscriptions",
                                f"subscriptions of customer {customer_id}", _subscription)

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
        return self._collection(f"/v1/customers/{quote(customer_id, safe='')}/subscribedskus",
                                f"licences of customer {customer_id}", _sku)

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
        payload = json_object(response)
        try:
            if payload is None:
                raise ValueError("the answer is not a JSON object")
            lines = tuple(OrderLine(line_number=int(li.get("lineItemNumber", n)), offer_id=_req_text(li, "offerId"),
                                    subscription_id=text_value(li.get("subscriptionId")), quantity=_opt_int(li, "quantity"),
                                    friendly_name=text_value(li.get("friendlyName")))
                          for n, li in enumerate(payload["lineItems"]))
            return Order(id=_req_text(payload, "id"), status=text_value(payload.get("status")), lines=lines,
                         request_id=request_id,
                         replayed=response.headers.get("MS-Idempotent-Replayed", "").lower() == "true")
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise PartnerCenterResponseError(f"Partner Center connection {self.partner_center_conn_id!r}: {what}:"
                                             f" {exc}") from None

    def _pricing_url(self) -> str:
        """Microsoft serves prices from another host than Partner Center's; a sandbox or proxy serves both."""
        if self._pricing[0]:
            return self._pricing[0]
        return DEFAULT_PRICING_URL if self.base_url.rstrip("/") == DEFAULT_BASE_URL else self.base_url.rstrip("/")

    def price_sheet(self, market: str, view: str = "updatedlicensebased", *, timeline: str = "current",
                    month: str | None = None) -> bytes:
        """Microsoft's price sheet for ``market`` (ISO 3166 alpha-2) and ``view``, as the CSV file it is."""
        what = f"price sheet {view} for {market} ({timeline}{' ' + month if month else ''})"
        params = {"timeline": timeline, **({"month": month} if month else {})}
        path = (f"/v1.0/sales/pricesheets(Market='{quote(market, safe='')}',"
                f"PricesheetView='{quote(view, safe='')}')/$value")
        response = self.request("GET", path, what=what, params=params, pricing=True)
        if "json" in response.headers.get("Content-Type", "") or not response.content:
            raise PartnerCenterResponseError(f"Partner Center connection {self.partner_center_conn_id!r}: {what}:"
                                             " the answer is not a price sheet file")
        return response.content


# -- parsing --------------------------------------------------------------------------------------


def _customer(item: Any) -> Customer:
    if not isinstance(item, dict):
        raise ValueError("not an object")
    profile = item.get("companyProfile") if isinstance(item.get("companyProfile"), dict) else {}
    tenant = _req_text(item, "id")
    return Customer(tenant_id=tenant.lower(), company_name=text_value(profile.get("companyName")),
                    domain=text_value(profile.get("domain")), relationship=text_value(item.get("relationshipToPartner")))


def _subscription(item: Any) -> Subscription:
    if not isinstance(item, dict):
        raise ValueError("not an object")
    quantity = item.get("quantity")
    if not isinstance(quantity, int) or isinstance(quantity, bool) or quantity < 0:
        raise ValueError(f"'quantity' is not a count: {quantity!r}")
    return Subscription(
        id=_req_text(item, "id").lower(), offer_id=_req_text(item, "offerId"), offer_name=text_value(item.get("offerName")),
        friendly_name=text_value(item.get("friendlyName")), quantity=quantity, unit_type=text_value(item.get("unitType")),
        status=_req_text(item, "status").lower(), auto_renew=bool_value(item.get("autoRenewEnabled")),
        billing_cycle=text_value(item.get("billingCycle")), term_duration=text_value(item.get("termDuration")),
        creation_date=iso_time(item.get("creationDate")), effective_start_date=iso_date(item.get("effectiveStartDate")),
        commitment_end_date=iso_date(item.get("commitmentEndDate")), is_trial=bool_value(item.get("isTrial")),
        order_id=text_value(item.get("orderId")))


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
        id=_req_text(item, "id"), name=_req_text(item, "name"), description=text_value(item.get("description")),
        category=text_value(category.get("name") or category.get("id")), product_id=text_value(product.get("id")),
        product_name=text_value(product.get("name")), unit_type=text_value(item.get("unitType") or product.get("unit")),
        billing=text_value(item.get("billing")), min_quantity=_opt_int(item, "minimumQuantity"),
        max_quantity=_opt_int(item, "maximumQuantity"), is_trial=bool_value(item.get("isTrial")),
        is_addon=bool_value(item.get("isAddOn")), is_auto_renewable=bool_value(item.get("isAutoRenewable")),
        available_for_purchase=bool_value(item.get("isAvailableForPurchase")),
        billing_cycles=tuple(str(c) for c in cycles),
        prerequisite_offers=tuple(str(p.get("id") if isinstance(p, dict) else p) for p in prerequisites),
        country=text_value(item.get("country")), locale=text_value(item.get("locale")))


def _sku(item: Any) -> SubscribedSku:
    if not isinstance(item, dict) or not isinstance(item.get("productSku"), dict):
        raise ValueError("no 'productSku' object")
    sku = item["productSku"]
    active, consumed = _opt_int(item, "activeUnits"), _opt_int(item, "consumedUnits")
    if active is None or consumed is None:
        raise ValueError("'activeUnits' and 'consumedUnits' are required")
    return SubscribedSku(sku_id=_req_text(sku, "id").lower(), name=text_value(sku.get("name")),
                         part_number=text_value(sku.get("skuPartNumber")), active_units=active, consumed_units=consumed,
                         suspended_units=_opt_int(item, "suspendedUnits"), warning_units=_opt_int(item, "warningUnits"),
                         total_units=_opt_int(item, "totalUnits"),
                         capability_status=text_value(item.get("capabilityStatus")))


# -- small helpers --------------------------------------------------------------------------------


def _iso(value) -> str | None:
    return value.isoformat() if value is not None else None


def _req_text(item: dict, key: str) -> str:
    value = item.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"'{key}' is missing or not a string")
    return value.strip()


def _opt_int(item: dict, key: str) -> int | None:
    value = item.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, Decimal)) or value != int(value):
        raise ValueError(f"'{key}' is not a whole number: {value!r}")
    return int(value)
