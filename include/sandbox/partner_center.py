"""Partner Center v1 and the Azure Retail Prices API, as an API of the Microsoft sandbox
(``microsoft.py``): the shapes panelflow's ``PartnerCenterHook`` and ``AzureRetailPricesHook`` use.

Partner Center (``Authorization: Bearer`` from the sandbox's ``TokenIssuer``; the token's tenant is
the partner, so each CSP profile — a partner tenant — sees its own customers and offers)::

    GET   /v1/customers?size=N
          {"totalCount", "items": [customer], "continuationToken", "links": {"self", "next": {
           "uri": "/customers?size=N&seekOperation=Next", "method": "GET",
           "headers": [{"key": "MS-ContinuationToken", "value": …}]}}}
    GET   /v1/customers/{id}/subscriptions           {"totalCount", "items": [subscription], "links": {"self"}}
    GET   /v1/customers/{id}/subscriptions/{sid}     subscription · 404
    PATCH /v1/customers/{id}/subscriptions/{sid}     {"autoRenewEnabled"?, "quantity"?, "friendlyName"?} → it
    GET   /v1/customers/{id}/subscribedskus
          {"totalCount", "items": [{"activeUnits", "consumedUnits", …, "productSku": {"id", "name", …}}]}
    POST  /v1/customers/{id}/orders
          {"referenceCustomerId", "billingCycle", "lineItems": [{"lineItemNumber", "offerId", "quantity",
           "friendlyName"?}]} → 201 order (completed, each line item with its new subscription's ``subscriptionId``)
    GET   /v1/offers?country=GB&offset=0&size=N
          {"totalCount", "items": [offer], "links": {"next": {"uri": "/offers?country=GB&offset=N&size=N"}}}

Orders are idempotent on ``MS-RequestId`` (as Partner Center documents): the same id with the same
body answers the first order again (``MS-Idempotent-Replayed: true``) and places nothing; the same
id with another body is refused (409). Every answer echoes ``MS-RequestId``/``MS-CorrelationId``.

Partner pricing (Microsoft's "Get a price sheet"; the same tokens, as a partner's app+user token would
be, on this one host where the real API is ``api.partner.microsoft.com``)::

    GET   /v1.0/sales/pricesheets(Market='GB',PricesheetView='updatedlicensebased')/$value?timeline=current
          the sheet as a CSV file (``text/csv``; columns ``PRICE_SHEET_COLUMNS``): ``timeline`` current (rows
          in effect by the sandbox's day), future (rows starting later), history (``month=YYYYMM``: rows
          starting in that month; without ``month`` 400); a market that is not two letters 400

Azure Retail Prices (no auth, as the real one)::

    GET /api/retail/prices?$filter=serviceName eq 'Virtual Machines' and armRegionName eq 'uksouth'&currencyCode='GBP'
        {"BillingCurrency", "CustomerEntityId", "CustomerEntityType", "Items": [price],
         "NextPageLink": <absolute URL> | null, "Count"}

``$filter`` takes ``field eq 'value'`` terms joined by ``and`` (a bad one: 400, as the real API).

In-process controls (tests drive them while the hooks talk HTTP): ``throttle(count, status=429,
retry_after=1)`` (the next ``count`` requests of either API; ``retry_after=None`` sends no header),
``calm()`` (no more of it), ``malform(kind, page=1, how="bad_item")`` (the ``page``-th next page of ``customers``, ``offers``,
``subscriptions``, ``skus`` or ``prices`` is malformed: ``bad_item``, ``items_not_list``,
``not_json``), ``after(n, action)`` (run ``action`` after the next ``n`` requests — e.g.
``issuer.expire_all`` for a token expiring mid-sync), ``lose_next_order_answer()`` (the next order is
placed but answered 503, as a lost answer), the issuer's ``fail_tenant``/``expire_all``, and data
changes: ``add_partner``, ``add_customer``, ``add_offer``, ``add_subscription``,
``update_subscription``, ``renew``, ``set_usage``, ``add_price``, ``add_price_sheet_row``. ``requests`` records every API
request (method, path, status, partner, request id); ``orders`` every order actually placed.

On the command line (``python -m sandbox.microsoft --port 8767 …``) it serves demo data:
``--pc-partner-tenants sandbox-partner`` (comma-separated; one per CSP profile, each with the app
``--pc-client-id panelflow-partner-center`` / ``--pc-client-secret``, default
``$PANELFLOW_SANDBOX_PARTNER_CENTER_SECRET`` else ``pc_test_sandbox``), ``--pc-customers 12`` customers
with subscriptions and licence usage, ``--pc-offers 30`` GB offers, ``--pc-page-size 100``,
``--retail-prices 2500`` meters (USD and GBP), ``--retail-page-size 1000``.
"""

from __future__ import annotations

import base64
import calendar
import csv
import hashlib
import io
import json
import os
import re
import threading
import uuid
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Callable
from urllib.parse import quote, urlencode

from sandbox.microsoft import Request, Response

PRICES_PATH = "/api/retail/prices"
PRICE_SHEETS_PATH = "/v1.0/sales/pricesheets("
PRICE_SHEET_COLUMNS = ("ProductTitle", "ProductId", "SkuId", "SkuTitle", "Publisher", "SkuDescription", "UnitOfMeasure",
                       "TermDuration", "BillingPlan", "Market", "Currency", "UnitPrice", "PricingTierRangeMin",
                       "PricingTierRangeMax", "EffectiveStartDate", "EffectiveEndDate", "Tags", "ERP Price", "Segment")
KINDS = ("customers", "offers", "subscriptions", "skus", "prices")
ONE_DAY = timedelta(days=1)
NAMESPACE = uuid.UUID("6f1d7c1e-3c55-4c4f-9d0e-2b8f2a1c9a77")


def _guid(*parts: Any) -> str:
    """A stable GUID for sandbox data (the same demo data gets the same ids every start)."""
    return str(uuid.uuid5(NAMESPACE, ":".join(str(p) for p in parts)))


def _stamp(d: date | datetime) -> str:
    if isinstance(d, datetime):
        return d.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"{d.isoformat()}T00:00:00Z"


def add_months(d: date, months: int) -> date:
    y, m = divmod(d.month - 1 + months, 12)
    year, month = d.year + y, m + 1
    return date(year, month, min(d.day, calendar.monthrange(year, month)[1]))


def _term_months(term: str) -> int:
    return {"P1M": 1, "P1Y": 12, "P3Y": 36}.get(term, 1)


def _error(status: int, code: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(status, {"code": code, "description": message, "data": [], "source": "PartnerCenterSandbox"},
                    headers or {})


class Partner:
    """One partner tenant (a CSP profile's account): its customers and offer catalogues."""

    def __init__(self, tenant: str):
        self.tenant = tenant
        self.customers: dict[str, dict[str, Any]] = {}       # id → customer resource (insertion order)
        self.subscriptions: dict[str, dict[str, dict]] = {}  # customer id → subscription id → subscription
        self.skus: dict[str, dict[str, dict]] = {}           # customer id → sku id → subscribed sku
        self.offers: dict[str, list[dict[str, Any]]] = {}    # country → offers
        self.orders: dict[str, dict[str, Any]] = {}          # order id → order
        self.idempotency: dict[str, tuple[str, Response]] = {}  # MS-RequestId → (body fingerprint, answer)


class PartnerCenterApi:
    def __init__(self, issuer, *, page_size: int = 100, prices_page_size: int = 1000, today: date | None = None):
        self.issuer = issuer
        self.max_page_size = page_size             # the largest ``size`` the API serves (and the default)
        self.prices_page_size = prices_page_size
        self.today = today                         # new orders' start date (None: the real date)
        self.partners: dict[str, Partner] = {}
        self.prices: list[dict[str, Any]] = []
        self.price_sheets: dict[tuple[str, str], list[dict[str, str]]] = {}   # (market, view) → rows
        self.requests: list[dict[str, Any]] = []
        self.orders: list[dict[str, Any]] = []     # every order placed: partner, customer, request id, order
        self.lock = threading.RLock()
        self._throttle: list[tuple[int, float | None]] = []
        self._malform: dict[str, list[tuple[int, str]]] = {k: [] for k in KINDS}
        self._after: list[list] = []
        self._lose_order_answers = 0
        self._etags = 0

    # -- controls ---------------------------------------------------------------------------------

    def throttle(self, count: int, status: int = 429, retry_after: float | None = 1.0) -> None:
        """The next ``count`` requests (either API) are answered ``status`` (429/503)."""
        with self.lock:
            self._throttle.extend([(status, retry_after)] * count)

    def calm(self) -> None:
        """Drop the throttling still queued."""
        with self.lock:
            self._throttle.clear()

    def malform(self, kind: str, page: int = 1, how: str = "bad_item") -> None:
        """The ``page``-th next page of ``kind`` served is malformed (``bad_item``/``items_not_list``/``not_json``)."""
        if kind not in KINDS or how not in ("bad_item", "items_not_list", "not_json"):
            raise ValueError(f"malform({kind!r}, how={how!r})")
        with self.lock:
            self._malform[kind].append((page, how))

    def after(self, n: int, action: Callable[[], None]) -> None:
        """Run ``action`` once the next ``n`` requests have been answered."""
        with self.lock:
            self._after.append([n, action])

    def lose_next_order_answer(self, count: int = 1) -> None:
        """The next ``count`` orders are placed, but their answer is a 503 (lost on the way)."""
        with self.lock:
            self._lose_order_answers += count

    def statuses(self) -> dict[int, int]:
        out: dict[int, int] = {}
        for r in self.requests:
            out[r["status"]] = out.get(r["status"], 0) + 1
        return out

    # -- data -------------------------------------------------------------------------------------

    def add_partner(self, tenant: str) -> Partner:
        with self.lock:
            return self.partners.setdefault(tenant, Partner(tenant))

    def add_customer(self, tenant: str, company_name: str, domain: str | None = None,
                     customer_id: str | None = None, country: str = "GB") -> str:
        partner = self.add_partner(tenant)
        cid = customer_id or _guid(tenant, "customer", company_name)
        domain = domain or company_name.lower().replace(" ", "") + ".onmicrosoft.com"
        with self.lock:
            partner.customers[cid] = {
                "id": cid,
                "companyProfile": {"tenantId": cid, "domain": domain, "companyName": company_name,
                                   "links": {"self": {"uri": f"/customers/{cid}/profiles/company", "method": "GET",
                                                      "headers": []}},
                                   "attributes": {"objectType": "CustomerCompanyProfile"}},
                "billingProfile": {"defaultAddress": {"country": country}},
                "relationshipToPartner": "reseller",
                "allowDelegatedAccess": True,
                "links": {"self": {"uri": f"/customers/{cid}", "method": "GET", "headers": []}},
                "attributes": {"objectType": "Customer"},
            }
            partner.subscriptions.setdefault(cid, {})
            partner.skus.setdefault(cid, {})
        return cid

    def add_offer(self, tenant: str, offer_id: str, name: str, *, country: str = "GB", category: str = "OnlineServices",
                  min_quantity: int = 1, max_quantity: int = 10000, is_trial: bool = False, is_addon: bool = False,
                  billing: str = "license", product_id: str | None = None, **extra) -> dict[str, Any]:
        partner = self.add_partner(tenant)
        offer = {
            "id": offer_id, "name": name, "description": f"{name} for business.", "minimumQuantity": min_quantity,
            "maximumQuantity": max_quantity, "rank": 0, "uri": f"/offers/{offer_id}", "locale": "en-GB",
            "country": country,
            "category": {"id": category, "name": category, "rank": 10, "locale": "en-GB", "country": country},
            "prerequisiteOffers": [], "isAddOn": is_addon, "hasAddOns": False, "isAvailableForPurchase": True,
            "billing": billing, "supportedBillingCycles": ["monthly", "annual"], "isAutoRenewable": True,
            "product": {"id": product_id or offer_id.split("-")[0], "name": name, "unit": "Licenses"},
            "unitType": "Licenses", "isTrial": is_trial, "salesGroupId": "o365",
            "links": {"learnMore": {"uri": "https://products.office.example/", "method": "GET", "headers": []}},
            "attributes": {"objectType": "Offer"}, **extra,
        }
        with self.lock:
            offers = partner.offers.setdefault(country, [])
            at = next((i for i, o in enumerate(offers) if o["id"] == offer_id), None)
            if at is None:
                offers.append(offer)
            else:  # a changed offer keeps its place in the catalogue
                offers[at] = offer
        return offer

    def remove_offer(self, tenant: str, offer_id: str, country: str = "GB") -> None:
        with self.lock:
            offers = self.partners[tenant].offers.get(country, [])
            offers[:] = [o for o in offers if o["id"] != offer_id]

    def _offer(self, partner: Partner, offer_id: str) -> dict[str, Any] | None:
        for offers in partner.offers.values():
            for o in offers:
                if o["id"].lower() == offer_id.lower():
                    return o
        return None

    def add_subscription(self, tenant: str, customer_id: str, offer_id: str, quantity: int = 1, *,
                         subscription_id: str | None = None, start: date | None = None, term: str = "P1M",
                         commitment_end: date | None = None, auto_renew: bool = True, status: str = "active",
                         offer_name: str | None = None, billing_cycle: str | None = None,
                         order_id: str | None = None) -> dict[str, Any]:
        partner = self.partners[tenant]
        offer = self._offer(partner, offer_id)
        start = start or self._today()
        end = commitment_end or (add_months(start, _term_months(term)) - ONE_DAY)
        sid = subscription_id or _guid(tenant, customer_id, "subscription", offer_id,
                                       len(partner.subscriptions.get(customer_id, {})))
        sub = {
            "id": sid, "entitlementId": _guid(sid, "entitlement"), "offerId": offer_id,
            "offerName": offer_name or (offer["name"] if offer else offer_id), "friendlyName": offer_name
            or (offer["name"] if offer else offer_id), "quantity": quantity, "unitType": "Licenses",
            "hasPurchasableAddons": False, "creationDate": _stamp(start), "effectiveStartDate": _stamp(start),
            "commitmentEndDate": _stamp(end), "status": status, "autoRenewEnabled": auto_renew,
            "isTrial": bool(offer and offer.get("isTrial")), "billingType": "license",
            "billingCycle": billing_cycle or ("annual" if term == "P1Y" else "monthly"), "termDuration": term,
            "renewalTermDuration": term, "refundOptions": [], "isMicrosoftProduct": True, "partnerId": "",
            "contractType": "subscription", "orderId": order_id or _guid(sid, "order"),
            "links": {"offer": {"uri": f"/offers/{offer_id}", "method": "GET", "headers": []},
                      "self": {"uri": f"/customers/{customer_id}/subscriptions/{sid}", "method": "GET",
                               "headers": []}},
            "attributes": {"etag": _guid(sid, "etag", 0), "objectType": "Subscription"},
        }
        with self.lock:
            partner.subscriptions.setdefault(customer_id, {})[sid] = sub
        return sub

    def update_subscription(self, tenant: str, customer_id: str, subscription_id: str, **fields) -> dict[str, Any]:
        """Change a subscription's fields (Partner Center names: ``quantity``, ``status``, ``commitmentEndDate`` …;
        dates may be ``date`` objects)."""
        with self.lock:
            sub = self.partners[tenant].subscriptions[customer_id][subscription_id]
            for k, v in fields.items():
                sub[k] = _stamp(v) if isinstance(v, (date, datetime)) else v
            sub["attributes"]["etag"] = _guid(subscription_id, "etag", self._tick())
            return sub

    def renew(self, tenant: str, customer_id: str, subscription_id: str) -> dict[str, Any]:
        """The term ends as Partner Center would end it: renewed for another term when auto-renew is on,
        expired when it is off."""
        with self.lock:
            sub = self.partners[tenant].subscriptions[customer_id][subscription_id]
            if sub["autoRenewEnabled"] and sub["status"] == "active":
                end = date.fromisoformat(sub["commitmentEndDate"][:10])
                term = sub.get("renewalTermDuration") or sub["termDuration"]
                return self.update_subscription(tenant, customer_id, subscription_id,
                                                commitmentEndDate=add_months(end + ONE_DAY, _term_months(term))
                                                - ONE_DAY, termDuration=term)
            return self.update_subscription(tenant, customer_id, subscription_id, status="expired")

    def set_usage(self, tenant: str, customer_id: str, sku_id: str, name: str, *, active: int, consumed: int,
                  suspended: int = 0, warning: int = 0, part_number: str | None = None) -> None:
        with self.lock:
            self.partners[tenant].skus.setdefault(customer_id, {})[sku_id] = {
                "availableUnits": max(active - consumed, 0), "activeUnits": active, "consumedUnits": consumed,
                "suspendedUnits": suspended, "totalUnits": active + suspended + warning, "warningUnits": warning,
                "productSku": {"id": sku_id, "name": name,
                               "skuPartNumber": part_number or name.upper().replace(" ", "_"),
                               "targetType": "User", "licenseGroupId": "group1"},
                "servicePlans": [], "capabilityStatus": "Enabled",
                "attributes": {"objectType": "SubscribedSku"},
            }

    def add_price(self, **fields) -> dict[str, Any]:
        """A Retail Prices item; unset fields get plausible values (``meterId`` from ``meterName``…)."""
        name = fields.get("meterName", "D2 v3")
        region = fields.get("armRegionName", "uksouth")
        item = {
            "currencyCode": "USD", "tierMinimumUnits": 0.0, "retailPrice": 0.1, "unitPrice": 0.1,
            "armRegionName": region, "location": {"uksouth": "UK South", "ukwest": "UK West"}.get(region, region),
            "effectiveStartDate": "2026-01-01T00:00:00Z", "meterId": _guid("meter", name, region),
            "meterName": name, "productId": "DZH318Z0BQ4L", "skuId": "DZH318Z0BQ4L/00TG",
            "availabilityId": None, "productName": "Virtual Machines Dv3 Series", "skuName": name,
            "serviceName": "Virtual Machines", "serviceId": "DZH313Z7MMC8", "serviceFamily": "Compute",
            "unitOfMeasure": "1 Hour", "type": "Consumption", "isPrimaryMeterRegion": True,
            "armSkuName": "Standard_" + name.replace(" ", "_"),
        }
        item.update(fields)
        with self.lock:
            self.prices.append(item)
        return item

    # -- plumbing ---------------------------------------------------------------------------------

    def _tick(self) -> int:
        self._etags += 1
        return self._etags

    def _today(self) -> date:
        return self.today or datetime.now(timezone.utc).date()

    def _malformed(self, kind: str) -> str | None:
        """Count a page of ``kind`` served; the kind of damage when this one is to be malformed."""
        with self.lock:
            pending = self._malform[kind]
            hit = None
            for i, (page, how) in enumerate(pending):
                if page == 1 and hit is None:
                    hit = how
                    pending[i] = (0, how)
                else:
                    pending[i] = (page - 1, how)
            self._malform[kind] = [(p, h) for p, h in pending if p > 0]
            return hit

    @staticmethod
    def _damage(how: str, body: dict[str, Any], items_key: str, bad: dict[str, Any]) -> Response:
        if how == "not_json":
            return Response(200, b"<html><body>Service temporarily unavailable</body></html>",
                            {"Content-Type": "application/json"})
        if how == "items_not_list":
            return Response(200, {**body, items_key: {"value": body[items_key]}})
        items = list(body[items_key])
        items.insert(len(items) // 2, bad)
        return Response(200, {**body, items_key: items})

    def handle(self, req: Request) -> Response | None:
        if req.path.rstrip("/") == PRICES_PATH:
            kind = "prices"
        elif req.path.startswith("/v1/"):
            kind = "partner_center"
        elif req.path.startswith(PRICE_SHEETS_PATH):
            kind = "price_sheets"
        else:
            return None
        request_id = req.headers.get("MS-RequestId")
        correlation = req.headers.get("MS-CorrelationId")
        with self.lock:
            throttled = self._throttle.pop(0) if self._throttle else None
        partner_tenant = None
        if throttled is not None:
            status, retry_after = throttled
            headers = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else {}
            code = "TooManyRequests" if status == 429 else "ServiceUnavailable"
            resp = (_error(status, status, "Rate limit is exceeded. Try again later.", headers) if kind != "prices"
                    else Response(status, {"Error": {"Code": code, "Message": "Too many requests."}}, headers))
        elif kind == "prices":
            resp = self._prices(req)
        else:
            who = self.issuer.authorise(req)
            if not isinstance(who, str):  # the issuer's 401 (its Response class: microsoft.py may run as __main__)
                resp = who
            else:
                partner_tenant = who
                partner = self.partners.get(who)
                if partner is None:
                    resp = _error(403, 900202, f"Tenant {who} is not a Partner Center partner.")
                else:
                    try:
                        resp = (self._price_sheet(req) if kind == "price_sheets"
                                else self._partner_center(req, partner, request_id))
                    except (ValueError, KeyError, TypeError) as exc:
                        resp = _error(400, 400, f"The request is not valid: {exc}")
        for name, value in (("MS-RequestId", request_id), ("MS-CorrelationId", correlation)):
            if value:
                resp.headers.setdefault(name, value)
        with self.lock:
            self.requests.append({"method": req.method, "path": req.path, "query": req.query, "status": resp.status,
                                  "partner": partner_tenant, "request_id": request_id, "api": kind})
            due = []
            for entry in self._after:
                entry[0] -= 1
                if entry[0] <= 0:
                    due.append(entry)
            self._after = [e for e in self._after if e[0] > 0]
        for _, action in due:
            action()
        return resp

    def add_price_sheet_row(self, market: str, product_id: str, sku_id: str, title: str, currency: str,
                            erp_price: str, start: date, *, view: str = "updatedlicensebased", end: date | None = None,
                            term: str = "P1M", billing_plan: str = "Monthly", unit_price: str | None = None,
                            segment: str = "Commercial") -> dict[str, str]:
        """A row of the (market, view) price sheet, as the NCE licence-based sheet has it."""
        row = {"ProductTitle": title.split(" (")[0], "ProductId": product_id, "SkuId": sku_id, "SkuTitle": title,
               "Publisher": "Microsoft Corporation", "SkuDescription": title, "UnitOfMeasure": "1 License",
               "TermDuration": term, "BillingPlan": billing_plan, "Market": market, "Currency": currency,
               "UnitPrice": unit_price or erp_price, "PricingTierRangeMin": "", "PricingTierRangeMax": "",
               "EffectiveStartDate": f"{start.isoformat()}T00:00:00.0000000Z",
               "EffectiveEndDate": f"{(end or date(9999, 12, 31)).isoformat()}T23:59:59.9999999Z",
               "Tags": "License", "ERP Price": erp_price, "Segment": segment}
        with self.lock:
            self.price_sheets.setdefault((market, view), []).append(row)
        return row

    def _price_sheet(self, req: Request) -> Response:
        m = re.fullmatch(r"/v1\.0/sales/pricesheets\(Market='([^']*)',PricesheetView='([^']*)'\)/\$value",
                         req.path.replace("%27", "'"))
        if m is None or req.method != "GET":
            return _error(404, 404, f"No resource at {req.method} {req.path}.")
        market, view = m.groups()
        if not re.fullmatch(r"[A-Za-z]{2}", market):
            return _error(400, 400, f"Market '{market}' is not a two-letter country code.")
        timeline, month = req.arg("timeline") or "current", req.arg("month")
        today = self._today().isoformat()
        with self.lock:
            rows = list(self.price_sheets.get((market.upper(), view), []))
        if timeline == "current":
            rows = [r for r in rows if r["EffectiveStartDate"][:10] <= today]
        elif timeline == "future":
            rows = [r for r in rows if r["EffectiveStartDate"][:10] > today]
        elif timeline == "history" and month and re.fullmatch(r"\d{6}", month):
            rows = [r for r in rows if r["EffectiveStartDate"][:7].replace("-", "") == month]
        else:
            return _error(400, 400, "timeline must be current, future or history (history with month=YYYYMM).")
        out = io.StringIO()
        writer = csv.DictWriter(out, PRICE_SHEET_COLUMNS, lineterminator="\r\n")
        writer.writeheader()
        writer.writerows(rows)
        return Response(200, out.getvalue().encode("utf-8-sig"), {"Content-Type": "text/csv"})

    # -- Partner Center ---------------------------------------------------------------------------

    def _size(self, req: Request) -> int:
        size = int(req.arg("size") or self.max_page_size)
        if size < 1 or size > self.max_page_size:
            raise ValueError(f"size must be between 1 and {self.max_page_size}")
        return size

    def _partner_center(self, req: Request, partner: Partner, request_id: str | None) -> Response:
        parts = req.path.strip("/").split("/")[1:]  # without "v1"
        m = req.method
        if parts == ["customers"] and m == "GET":
            return self._customers(req, partner)
        if parts == ["offers"] and m == "GET":
            return self._offers(req, partner)
        if len(parts) >= 3 and parts[0] == "customers":
            cid = parts[1]
            if cid not in partner.customers:
                return _error(404, 2000, f"Customer {cid} was not found.")
            if parts[2:] == ["subscriptions"] and m == "GET":
                subs = list(partner.subscriptions.get(cid, {}).values())
                how = self._malformed("subscriptions")
                body = {"totalCount": len(subs), "items": subs,
                        "links": {"self": {"uri": f"/customers/{cid}/subscriptions", "method": "GET", "headers": []}},
                        "attributes": {"objectType": "Collection"}}
                return self._damage(how, body, "items", {"offerId": "broken", "quantity": "many"}) if how \
                    else Response(200, body)
            if len(parts) == 4 and parts[2] == "subscriptions":
                sub = partner.subscriptions.get(cid, {}).get(parts[3])
                if sub is None:
                    return _error(404, 800008, f"Subscription {parts[3]} was not found.")
                if m == "GET":
                    return Response(200, sub)
                if m == "PATCH":
                    body = req.json() or {}
                    changes = {k: body[k] for k in ("autoRenewEnabled", "quantity", "friendlyName", "status")
                               if k in body}
                    if "quantity" in changes and (not isinstance(changes["quantity"], int) or changes["quantity"] < 1):
                        return _error(400, 800002, "Quantity must be a positive integer.")
                    return Response(200, self.update_subscription(partner.tenant, cid, parts[3], **changes))
            if parts[2:] == ["subscribedskus"] and m == "GET":
                skus = list(partner.skus.get(cid, {}).values())
                how = self._malformed("skus")
                body = {"totalCount": len(skus), "items": skus, "attributes": {"objectType": "Collection"}}
                return self._damage(how, body, "items", {"activeUnits": "lots"}) if how else Response(200, body)
            if parts[2:] == ["orders"] and m == "POST":
                return self._order(req, partner, cid, request_id)
        return _error(404, 404, f"No resource at {req.method} {req.path}.")

    def _customers(self, req: Request, partner: Partner) -> Response:
        size = self._size(req)
        offset = 0
        if (req.arg("seekOperation") or "").lower() == "next":
            token = req.headers.get("MS-ContinuationToken") or ""
            try:
                owner, _, start = base64.urlsafe_b64decode(token.encode()).decode().partition(":")
                offset = int(start)
            except (ValueError, UnicodeDecodeError):
                return _error(400, 400, "The continuation token is not valid.")
            if owner != partner.tenant:
                return _error(400, 400, "The continuation token is not valid.")
        customers = list(partner.customers.values())
        page = customers[offset:offset + size]
        body: dict[str, Any] = {"totalCount": len(page), "items": page,
                                "links": {"self": {"uri": f"/customers?size={size}", "method": "GET", "headers": []}},
                                "attributes": {"objectType": "Collection"}}
        if offset + size < len(customers):
            token = base64.urlsafe_b64encode(f"{partner.tenant}:{offset + size}".encode()).decode()
            body["continuationToken"] = token
            body["links"]["next"] = {"uri": f"/customers?size={size}&seekOperation=Next", "method": "GET",
                                     "headers": [{"key": "MS-ContinuationToken", "value": token}]}
        how = self._malformed("customers")
        return self._damage(how, body, "items", {"companyProfile": {"companyName": "No id Ltd"}}) if how \
            else Response(200, body)

    def _offers(self, req: Request, partner: Partner) -> Response:
        country = (req.arg("country") or "").upper()
        if country not in partner.offers:
            return _error(400, 400, f"The country {country or '(none)'} is not supported.")
        size = self._size(req)
        offset = int(req.arg("offset") or 0)
        offers = partner.offers[country]
        page = offers[offset:offset + size]
        body: dict[str, Any] = {"totalCount": len(offers), "items": page,
                                "links": {"self": {"uri": f"/offers?country={country}&offset={offset}&size={size}",
                                                   "method": "GET", "headers": []}},
                                "attributes": {"objectType": "Collection"}}
        if offset + size < len(offers):
            body["links"]["next"] = {"uri": f"/offers?country={country}&offset={offset + size}&size={size}",
                                     "method": "GET", "headers": []}
        how = self._malformed("offers")
        return self._damage(how, body, "items", {"name": "An offer without an id", "minimumQuantity": "one"}) \
            if how else Response(200, body)

    def _order(self, req: Request, partner: Partner, cid: str, request_id: str | None) -> Response:
        body = req.json()
        if not isinstance(body, dict) or not isinstance(body.get("lineItems"), list) or not body["lineItems"]:
            return _error(400, 400, "An order needs lineItems.")
        fingerprint = hashlib.sha256(json.dumps([cid, body], sort_keys=True).encode()).hexdigest()
        with self.lock:
            if request_id and request_id in partner.idempotency:
                first, answer = partner.idempotency[request_id]
                if first != fingerprint:
                    return _error(409, 409, f"MS-RequestId {request_id} was used for another request.")
                return Response(answer.status, answer.body, {**answer.headers, "MS-Idempotent-Replayed": "true"})
            billing_cycle = body.get("billingCycle") or "monthly"
            if billing_cycle not in ("monthly", "annual"):
                return _error(400, 800030, f"Billing cycle {billing_cycle!r} is not supported.")
            lines = []
            for n, line in enumerate(body["lineItems"]):
                offer = self._offer(partner, str(line.get("offerId") or ""))
                if offer is None:
                    return _error(400, 800017, f"Offer {line.get('offerId')!r} is not available to this partner.")
                qty = line.get("quantity")
                if not isinstance(qty, int) or not offer["minimumQuantity"] <= qty <= offer["maximumQuantity"]:
                    return _error(400, 800002, f"Quantity {qty!r} is out of range for offer {offer['id']}.")
                lines.append((n, line, offer, qty))
            order_id = _guid(partner.tenant, cid, "order", request_id or uuid.uuid4())
            items = []
            for n, line, offer, qty in lines:
                sub = self.add_subscription(partner.tenant, cid, offer["id"], qty,
                                            subscription_id=_guid(order_id, "line", n),
                                            term="P1Y" if billing_cycle == "annual" else "P1M",
                                            billing_cycle=billing_cycle, order_id=order_id,
                                            offer_name=line.get("friendlyName") or offer["name"])
                items.append({"lineItemNumber": line.get("lineItemNumber", n), "offerId": offer["id"],
                              "subscriptionId": sub["id"], "friendlyName": sub["friendlyName"], "quantity": qty,
                              "links": {"subscription": {"uri": f"/customers/{cid}/subscriptions/{sub['id']}",
                                                         "method": "GET", "headers": []}}})
            order = {"id": order_id, "referenceCustomerId": cid, "billingCycle": billing_cycle, "lineItems": items,
                     "creationDate": _stamp(datetime.now(timezone.utc)), "status": "completed",
                     "links": {"self": {"uri": f"/customers/{cid}/orders/{order_id}", "method": "GET", "headers": []}},
                     "attributes": {"objectType": "Order"}}
            partner.orders[order_id] = order
            answer = Response(201, order, {"Location": f"/v1/customers/{cid}/orders/{order_id}"})
            if request_id:
                partner.idempotency[request_id] = (fingerprint, answer)
            self.orders.append({"partner": partner.tenant, "customer": cid, "request_id": request_id, "order": order})
            if self._lose_order_answers > 0:
                self._lose_order_answers -= 1
                return _error(503, 503, "The service is temporarily unavailable.")
            return answer

    # -- Azure Retail Prices ----------------------------------------------------------------------

    def _prices(self, req: Request) -> Response:
        if req.method != "GET":
            return Response(405, {"Error": {"Code": "MethodNotAllowed", "Message": "GET only."}})
        raw_filter = req.arg("$filter") or ""
        try:
            terms = _parse_filter(raw_filter)
        except ValueError as exc:
            return Response(400, {"Error": {"Code": "InvalidFilter", "Message": str(exc)}})
        currency = (req.arg("currencyCode") or "'USD'").strip("'").upper()
        skip = int(req.arg("$skip") or 0)
        with self.lock:
            matching = [p for p in self.prices
                        if all(str(p.get(k) or "").lower() == v.lower() for k, v in terms)
                        and p.get("currencyCode", "USD").upper() == currency]
        page = matching[skip:skip + self.prices_page_size]
        nxt = None
        if skip + self.prices_page_size < len(matching):
            query = {k: v for k, v in (("$filter", raw_filter), ("currencyCode", req.arg("currencyCode")),
                                       ("api-version", req.arg("api-version"))) if v}
            query["$skip"] = str(skip + self.prices_page_size)
            nxt = f"{req.base_url}{PRICES_PATH}?{urlencode(query, quote_via=quote, safe=chr(36) + chr(39))}"
        body = {"BillingCurrency": currency, "CustomerEntityId": "Default", "CustomerEntityType": "Retail",
                "Items": page, "NextPageLink": nxt, "Count": len(page)}
        how = self._malformed("prices")
        if how:
            return self._damage(how, body, "Items", {**(page[0] if page else {}), "meterId": "m-bad",
                                                     "retailPrice": "n/a"})
        return Response(200, body)


def _parse_filter(text: str) -> list[tuple[str, str]]:
    """``field eq 'value' and field eq 'value'`` → [(field, value)] (the subset the sandbox serves)."""
    terms = []
    if not text.strip():
        return terms
    for term in _split_and(text):
        field, op, value = (term.strip().split(" ", 2) + ["", ""])[:3]
        value = value.strip()
        if op.lower() != "eq" or not field or len(value) < 2 or value[0] != "'" or value[-1] != "'":
            raise ValueError(f"Invalid OData filter term: {term.strip()!r}")
        terms.append((field, value[1:-1].replace("''", "'")))
    return terms


def _split_and(text: str) -> list[str]:
    out, cur, quoted, i = [], "", False, 0
    while i < len(text):
        ch = text[i]
        if ch == "'":
            quoted = not quoted
        if not quoted and text[i:i + 5].lower() == " and ":
            out.append(cur)
            cur, i = "", i + 5
            continue
        cur += ch
        i += 1
    return out + [cur]


# -- demo data and the command line ---------------------------------------------------------------

DEMO_OFFERS = [("CFQ7TTC0LF8R", "Microsoft 365 Business Basic"), ("CFQ7TTC0LCHC", "Microsoft 365 Business Standard"),
               ("CFQ7TTC0LDPB", "Microsoft 365 Business Premium"), ("CFQ7TTC0LFLX", "Office 365 E3"),
               ("CFQ7TTC0LFLZ", "Office 365 E5"), ("CFQ7TTC0LH18", "Exchange Online (Plan 1)"),
               ("CFQ7TTC0LH16", "Exchange Online (Plan 2)"), ("CFQ7TTC0LH0R", "Microsoft Teams Essentials")]


def demo_partner(api: PartnerCenterApi, tenant: str, *, customers: int = 12, offers: int = 30,
                 country: str = "GB") -> None:
    """A partner with ``customers`` customers (two or three subscriptions each, usage near the limits for some)
    and ``offers`` offers."""
    for n in range(offers):
        offer_id, name = DEMO_OFFERS[n % len(DEMO_OFFERS)]
        suffix = n // len(DEMO_OFFERS)
        api.add_offer(tenant, f"{offer_id}:{suffix + 1:04d}",
                      name if not suffix else f"{name} (variant {suffix + 1})", country=country, product_id=offer_id)
    today = api._today()
    for c in range(1, customers + 1):
        cid = api.add_customer(tenant, f"Demo Customer {c:03d}", f"democustomer{c:03d}.onmicrosoft.com")
        for k in range(2 + c % 2):
            offer_id, name = DEMO_OFFERS[(c + k) % len(DEMO_OFFERS)]
            qty = 5 + (c * 7 + k) % 20
            api.add_subscription(tenant, cid, f"{offer_id}:0001", qty, start=add_months(today, -(c % 11)),
                                 term="P1Y" if k % 2 else "P1M", offer_name=name)
            api.set_usage(tenant, cid, _guid(offer_id, "sku"), name, active=qty, consumed=qty - (c + k) % 4)


def demo_prices(api: PartnerCenterApi, count: int = 2500) -> None:
    regions = ("uksouth", "ukwest", "westeurope", "northeurope")
    for n in range(count):
        region = regions[n % len(regions)]
        series = n // len(regions)
        for currency, rate in (("USD", 1.0), ("GBP", 0.79)):
            price = round((0.012 + series * 0.0031) * rate, 6)
            api.add_price(meterName=f"D{series % 64 + 1} v{3 + series // 64}", armRegionName=region,
                          currencyCode=currency, retailPrice=price, unitPrice=price,
                          meterId=_guid("meter", series, region))


def demo_price_sheet(api: PartnerCenterApi, market: str = "GB", currency: str = "GBP") -> None:
    """The demo offers' monthly prices: in effect since the month began, and a rise from next month for
    every other offer (so BillingWork has a change to announce)."""
    first = api._today().replace(day=1)
    for n, (offer_id, name) in enumerate(DEMO_OFFERS):
        price = Decimal("4.90") + Decimal("3.70") * n
        api.add_price_sheet_row(market, offer_id, "0001", name, currency, str(price), first)
        if n % 2 == 0:
            api.add_price_sheet_row(market, offer_id, "0001", name, currency, str(price * Decimal("1.05")),
                                    add_months(first, 1))


def add_arguments(parser) -> None:
    g = parser.add_argument_group("Partner Center and Azure Retail Prices (partner_center.py)")
    g.add_argument("--pc-partner-tenants", default="sandbox-partner",
                   help="comma-separated partner tenants (one per CSP profile)")
    g.add_argument("--pc-client-id", default="panelflow-partner-center")
    g.add_argument("--pc-client-secret", default=None,
                   help="default: $PANELFLOW_SANDBOX_PARTNER_CENTER_SECRET, else pc_test_sandbox")
    g.add_argument("--pc-customers", type=int, default=12)
    g.add_argument("--pc-offers", type=int, default=30)
    g.add_argument("--pc-page-size", type=int, default=100, help="the largest page Partner Center serves")
    g.add_argument("--retail-prices", type=int, default=2500, help="demo meters (each in USD and GBP)")
    g.add_argument("--retail-page-size", type=int, default=1000)


def from_arguments(args, issuer) -> PartnerCenterApi:
    secret = args.pc_client_secret or os.environ.get("PANELFLOW_SANDBOX_PARTNER_CENTER_SECRET") or "pc_test_sandbox"
    api = PartnerCenterApi(issuer, page_size=args.pc_page_size, prices_page_size=args.retail_page_size)
    for tenant in [t.strip() for t in args.pc_partner_tenants.split(",") if t.strip()]:
        issuer.register(tenant, args.pc_client_id, secret)
        demo_partner(api, tenant, customers=args.pc_customers, offers=args.pc_offers)
    demo_prices(api, args.retail_prices)
    demo_price_sheet(api)
    return api
