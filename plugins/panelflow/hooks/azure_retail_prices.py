"""The Azure Retail Prices API (``GET /api/retail/prices``), for AzureRateWork.

It replaces the retired RateCard API: public, no authentication, one price per item, pages linked
by ``NextPageLink``. The API is an Airflow connection (type ``panelflow_azure_retail_prices``;
``azure_retail_prices`` by default): host = the API's base URL (default
``https://prices.azure.com``; a bare host takes schema ``http``/``https`` and port), and extras:

- ``filter``: the OData ``$filter`` choosing the prices to keep (``serviceFamily eq 'Compute' and
  armRegionName eq 'uksouth'``; default: none — every price, several hundred thousand items);
- ``currencies``: the currencies to fetch (default ``["USD"]``), one pass each (``currencyCode``);
- ``api_version`` (default ``2023-01-01-preview``), ``timeout`` (seconds, default 30),
  ``retries`` (attempts per page, default 6), ``backoff`` (first wait, doubling; default 1),
  ``max_retry_wait`` (longest wait, also the cap on ``Retry-After``; default 120).

A 429/5xx, a timeout or a lost connection is retried (``Retry-After`` honoured, exponential
backoff without it); :class:`AzureRetailPricesUnavailable` once the attempts are spent. A page is
parsed and checked whole before it is handed out: a malformed one raises
:class:`AzureRetailPricesResponseError` naming the page and the item, so none of it is written.
Prices are parsed as ``Decimal``, exactly as published.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any, Iterator
from urllib.parse import urlsplit

from panelflow.hooks._http import HttpApiHook, error_message, iso_date, json_object, text_value

DEFAULT_BASE_URL = "https://prices.azure.com"
DEFAULT_API_VERSION = "2023-01-01-preview"
PATH = "/api/retail/prices"
MAX_PAGES = 100_000


class AzureRetailPricesError(Exception):
    """Any failure to read the price list."""


class AzureRetailPricesUnavailable(AzureRetailPricesError):
    """Throttled, failing or unreachable through every attempt."""


class AzureRetailPricesRequestError(AzureRetailPricesError):
    """The API refused the request (a 4xx: a bad ``$filter``, say)."""


class AzureRetailPricesResponseError(AzureRetailPricesError):
    """A page that is not what the API documents."""


@dataclass(frozen=True)
class RetailPrice:
    meter_id: str
    meter_name: str | None
    region: str
    location: str | None
    currency: str
    retail_price: Decimal
    unit_price: Decimal
    tier_minimum_units: Decimal
    effective_date: date
    price_type: str
    reservation_term: str | None
    sku_id: str | None
    sku_name: str | None
    arm_sku_name: str | None
    product_id: str | None
    product_name: str | None
    service_name: str | None
    service_family: str | None
    unit_of_measure: str | None
    is_primary_meter_region: bool | None

    def as_row(self) -> dict[str, Any]:
        row = {k: getattr(self, k) for k in self.__dataclass_fields__}
        row["effective_date"] = self.effective_date.isoformat()
        for k in ("retail_price", "unit_price", "tier_minimum_units"):
            row[k] = str(row[k])  # exact, as published
        return row


@dataclass(frozen=True)
class PricePage:
    number: int
    url: str
    items: list[RetailPrice]


class AzureRetailPricesHook(HttpApiHook):
    conn_name_attr = "azure_retail_prices_conn_id"
    default_conn_name = "azure_retail_prices"
    conn_type = "panelflow_azure_retail_prices"
    hook_name = "panelflow Azure Retail Prices"

    DEFAULT_BASE_URL = DEFAULT_BASE_URL
    USER_AGENT = "panelflow-azure-rates"

    def __init__(self, azure_retail_prices_conn_id: str = default_conn_name, *, sleep=time.sleep, **kwargs):
        super().__init__(azure_retail_prices_conn_id, sleep=sleep, **kwargs)
        self.filter: str | None = None
        self.currencies: list[str] = []

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return cls._rest_form(hidden=["login", "password"], labels={}, host=DEFAULT_BASE_URL,
                              extra='{"filter": "serviceFamily eq \'Compute\'", "currencies": ["USD", "GBP"],'
                                    ' "timeout": 30, "retries": 6, "backoff": 1, "max_retry_wait": 120}')

    @property
    def base_url(self) -> str:
        return self.settings.base_url

    def _configure(self, conn, extra: dict[str, Any]) -> dict[str, str]:
        """The prices to fetch: the ``$filter``, the currencies (one pass each), the API version."""
        self.filter = text_value(extra.get("filter"))
        currencies = extra.get("currencies", ["USD"])
        if isinstance(currencies, str):
            currencies = [c for c in currencies.replace(",", " ").split() if c]
        self.currencies = [str(c).strip().upper() for c in currencies]
        if not self.currencies or any(len(c) != 3 or not c.isalpha() for c in self.currencies):
            raise ValueError(f"connection {self.azure_retail_prices_conn_id!r}: extra 'currencies' must list"
                             f" ISO 4217 codes, not {currencies!r}")
        self.api_version = str(extra.get("api_version") or DEFAULT_API_VERSION)
        return {}

    def test_connection(self) -> tuple[bool, str]:
        try:
            self.get_conn()
            next(self.price_pages(self.currencies[0]), None)
        except (AzureRetailPricesError, ValueError) as exc:
            return False, str(exc)
        return True, "the Retail Prices API answered"

    def _get(self, url: str, params: dict[str, str] | None, what: str) -> dict[str, Any]:
        where = f"Azure Retail Prices connection {self.azure_retail_prices_conn_id!r}: {what}"
        response = self._with_retries(lambda: self._answer("GET", url, params=params),
                                      lambda reason: AzureRetailPricesUnavailable(f"{where}: {reason}"))
        if response.status_code != 200:
            raise AzureRetailPricesRequestError(f"{where}: HTTP {response.status_code}: {error_message(response)}")
        payload = json_object(response, parse_float=Decimal)
        if payload is None:
            raise AzureRetailPricesResponseError(f"{where}: the answer is not a JSON object; page rejected")
        return payload

    def _next(self, link: str) -> str:
        parts, base = urlsplit(link), urlsplit(self.base_url)
        if parts.scheme and parts.hostname != base.hostname:
            raise AzureRetailPricesResponseError(f"NextPageLink points to another host ({parts.hostname});"
                                                 " not followed")
        return parts.path + (f"?{parts.query}" if parts.query else "")

    def price_pages(self, currency: str, price_filter: str | None = None) -> Iterator[PricePage]:
        """Every page of prices in ``currency`` matching ``price_filter`` (default: the connection's)."""
        self.get_conn()
        currency = currency.upper()
        params: dict[str, str] | None = {"api-version": self.api_version, "currencyCode": f"'{currency}'"}
        if price_filter or self.filter:
            params["$filter"] = price_filter or self.filter
        url, seen = PATH, set()
        for number in range(1, MAX_PAGES + 1):
            what = f"{currency} prices, page {number}"
            payload = self._get(url, params, what)
            items = payload.get("Items")
            link = payload.get("NextPageLink")
            if not isinstance(items, list) or not (link is None or isinstance(link, str)):
                raise AzureRetailPricesResponseError(
                    f"Azure Retail Prices connection {self.azure_retail_prices_conn_id!r}: {what}: 'Items' is not a"
                    " list or 'NextPageLink' not a link; page rejected")
            parsed = []
            for index, item in enumerate(items):
                try:
                    parsed.append(_price(item, currency))
                except (ValueError, TypeError, KeyError, ArithmeticError) as exc:
                    raise AzureRetailPricesResponseError(
                        f"Azure Retail Prices connection {self.azure_retail_prices_conn_id!r}: {what}: item"
                        f" {index + 1}{_meter(item)}: {exc}; page rejected, nothing of it written") from None
            yield PricePage(number, url, parsed)
            if not link:
                return
            url, params = self._next(link), None
            if url in seen:
                raise AzureRetailPricesResponseError(f"{what}: NextPageLink repeats an earlier page")
            seen.add(url)
        raise AzureRetailPricesResponseError(f"{currency} prices: more than {MAX_PAGES} pages")


def _meter(item: Any) -> str:
    return f" (meter {item.get('meterId')})" if isinstance(item, dict) and item.get("meterId") else ""


def _number(item: dict, key: str, default: Any = None) -> Decimal:
    value = item.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, Decimal)):
        raise ValueError(f"'{key}' is not a number: {value!r}")
    value = Decimal(value)
    if not value.is_finite():
        raise ValueError(f"'{key}' is not a finite number")
    return value


def _price(item: Any, currency: str) -> RetailPrice:
    if not isinstance(item, dict):
        raise ValueError("not an object")
    meter = item.get("meterId")
    if not isinstance(meter, str) or not meter.strip():
        raise ValueError("'meterId' is missing")
    code = str(item.get("currencyCode") or "").upper()
    if code != currency:
        raise ValueError(f"currency {code!r}, asked for {currency}")
    effective = iso_date(item.get("effectiveStartDate"))
    if effective is None:
        raise ValueError("'effectiveStartDate' is missing")
    price_type = item.get("type")
    if not isinstance(price_type, str) or not price_type:
        raise ValueError("'type' is missing")
    retail, unit = _number(item, "retailPrice"), _number(item, "unitPrice")
    if retail < 0 or unit < 0:
        raise ValueError("a negative price")
    return RetailPrice(
        meter_id=meter.strip().lower(), meter_name=text_value(item.get("meterName")),
        region=str(item.get("armRegionName") or "").strip().lower(), location=text_value(item.get("location")),
        currency=code, retail_price=retail, unit_price=unit,
        tier_minimum_units=_number(item, "tierMinimumUnits", 0), effective_date=effective, price_type=price_type,
        reservation_term=text_value(item.get("reservationTerm")), sku_id=text_value(item.get("skuId")),
        sku_name=text_value(item.get("skuName")), arm_sku_name=text_value(item.get("armSkuName")),
        product_id=text_value(item.get("productId")), product_name=text_value(item.get("productName")),
        service_name=text_value(item.get("serviceName")), service_family=text_value(item.get("serviceFamily")),
        unit_of_measure=text_value(item.get("unitOfMeasure")),
        is_primary_meter_region=item.get("isPrimaryMeterRegion") if isinstance(item.get("isPrimaryMeterRegion"),
                                                                               bool) else None)
