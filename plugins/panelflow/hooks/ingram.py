"""Ingram Micro's Reseller API (Xvantage, v6): an order's status, and cancelling it.

One Ingram customer number = one Airflow connection (type ``panelflow_ingram``; ``ingram`` by
default, ``ingram_subscriptions.conn_id`` names each account's):

- host = the API's base URL (default ``https://api.ingrammicro.com:443``; the sandbox's
  ``http://127.0.0.1:<port>``);
- login = the app's Client ID, password = its Client Secret;
- extras ``customer_number`` (``IM-CustomerNumber``, required), ``country_code`` (``IM-CountryCode``,
  two letters, required), ``sender_id`` (``IM-SenderID``, default ``panelflow``), ``token_path``
  (default ``/oauth/oauth20/token``, the reseller API's; Ingram's vendor API uses
  ``/oauth/oauth30/token``), ``timeout``, ``retries``, ``backoff``, ``max_retry_wait`` (see
  ``panelflow.hooks._http``).

Tokens: OAuth 2.0 client credentials (``POST {token_path}``, form ``grant_type=client_credentials``,
``client_id``, ``client_secret`` → ``access_token``, ``expires_in``), cached until shortly before they
expire (Ingram says a day at most), renewed once on a 401. Every API request carries the
``IM-CustomerNumber``, ``IM-CountryCode``, ``IM-SenderID`` headers and an ``IM-CorrelationID``.

API, as Ingram documents it for Reseller v6 (what ``include/sandbox/ingram.py`` answers)::

    GET    /resellers/v6.1/orders/{ordernumber}    order details → {"ingramOrderNumber", "orderStatus", …}
    DELETE /resellers/v6/orders/{OrderNumber}      cancel the order → 200, empty body; 400/404/405 refused

The reseller API documents no subscription-cancel resource; a subscription bought through it is a
line of a sales order, and the order cancel above is the documented way to stop it. A cancel is
**not** resent by this hook when its outcome is unknown (a timeout, a dropped connection, a 5xx):
:class:`IngramOutcomeUnknown` tells the caller to read the order back first (its correlation id
kept), because Ingram documents no idempotency for it. A 429 (not executed) is retried. The
client secret and tokens travel only in the token form and the ``Authorization`` header.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from panelflow.hooks._http import (
    HttpApiHook, RequestRefused, Retryable, json_object, oauth_token, retry_after, text_value,
)

DEFAULT_BASE_URL = "https://api.ingrammicro.com:443"
DEFAULT_TOKEN_PATH = "/oauth/oauth20/token"
MAX_TOKEN_LIFETIME = 86400.0  # Ingram: "the access token expires every 24 hours"
TOKEN_MARGIN = 300.0


class IngramError(Exception):
    """Any failure to get an answer from Ingram Micro."""


class IngramUnavailable(IngramError):
    """Throttled or unreachable through every attempt; nothing was executed."""


class IngramOutcomeUnknown(IngramError):
    """A cancel went out and no answer came back (timeout, lost connection, 5xx): read the order back."""


class IngramRefused(IngramError, RequestRefused):
    """Ingram refused the request (400, 404, 405): resending it unchanged will not help."""


class IngramAuthenticationError(IngramRefused):
    """The app's credentials or token were refused: every request of this account fails the same way."""


class IngramResponseError(IngramError):
    """An answer that is not what the API documents."""


@dataclass(frozen=True)
class OrderStatus:
    order_number: str
    status: str          # Ingram's orderStatus, upper case (CANCELLED, SHIPPED, …)

    @property
    def cancelled(self) -> bool:
        return self.status in ("CANCELLED", "CANCELED")


class IngramHook(HttpApiHook):
    """One ``httpx.Client`` and one cached token per hook (one Ingram customer number); ``close()`` it."""

    conn_name_attr = "ingram_conn_id"
    default_conn_name = "ingram"
    conn_type = "panelflow_ingram"
    hook_name = "panelflow Ingram Micro Reseller API"

    DEFAULT_BASE_URL = DEFAULT_BASE_URL
    USER_AGENT = "panelflow-ingram"
    DEFAULT_RETRIES = 4

    def __init__(self, ingram_conn_id: str = default_conn_name, *, sleep=time.sleep, clock=time.monotonic, **kwargs):
        super().__init__(ingram_conn_id, sleep=sleep, **kwargs)
        self._clock = clock
        self._token_form: dict[str, str] | None = None
        self._token_path = DEFAULT_TOKEN_PATH
        self._access_token: str | None = None
        self._token_expires = 0.0
        self.tokens_acquired = 0

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return cls._rest_form(hidden=[], labels={"login": "Client ID", "password": "Client Secret"},
                              host=DEFAULT_BASE_URL,
                              extra='{"customer_number": "20-222222", "country_code": "US", "sender_id": "panelflow",'
                                    ' "timeout": 30, "retries": 4}')

    def _configure(self, conn, extra: dict[str, Any]) -> dict[str, str]:
        """The client credentials for the token form; the IM- headers every API request carries."""
        cid = self.ingram_conn_id
        customer, country = text_value(extra.get("customer_number")), text_value(extra.get("country_code"))
        if not conn.login or not conn.password:
            raise ValueError(f"connection {cid!r} needs login (the Client ID) and password (the Client Secret)")
        if not customer or not country or len(country) != 2:
            raise ValueError(f"connection {cid!r} needs extras 'customer_number' and 'country_code' (two letters)")
        self._token_form = {"grant_type": "client_credentials", "client_id": conn.login,
                            "client_secret": conn.password}
        self._token_path = text_value(extra.get("token_path")) or DEFAULT_TOKEN_PATH
        return {"IM-CustomerNumber": customer, "IM-CountryCode": country.upper(),
                "IM-SenderID": text_value(extra.get("sender_id")) or "panelflow"}

    # -- tokens ---------------------------------------------------------------------------------

    def _token(self) -> str:
        if self._access_token is not None and self._clock() < self._token_expires:
            return self._access_token
        where = f"Ingram connection {self.ingram_conn_id!r}: token"
        response = self._with_retries(
            lambda: self._answer("POST", self._token_path, data=self._token_form,
                                 headers={"Content-Type": "application/x-www-form-urlencoded"}),
            lambda reason: IngramUnavailable(f"{where}: {reason}"))
        token, lifetime = oauth_token(response, where, refused=IngramAuthenticationError, malformed=IngramResponseError,
                                      message=_message, default_lifetime=MAX_TOKEN_LIFETIME,
                                      max_lifetime=MAX_TOKEN_LIFETIME)
        self._access_token = token
        self._token_expires = self._clock() + lifetime - min(TOKEN_MARGIN, lifetime / 2)
        self.tokens_acquired += 1
        return token

    # -- requests -------------------------------------------------------------------------------

    def _exchange(self, method: str, path: str, correlation_id: str):
        """One request with a token (renewed once on a 401), or the 401 that a new token did not cure."""
        headers = {"IM-CorrelationID": correlation_id}
        response = self._send(self.get_conn(), method, path,
                              headers={**headers, "Authorization": f"Bearer {self._token()}"})
        if response.status_code == 401:
            self._access_token = None
            response = self._send(self.get_conn(), method, path,
                                  headers={**headers, "Authorization": f"Bearer {self._token()}"})
        return response

    def _refused(self, where: str, response) -> IngramRefused:
        status = response.status_code
        cls = IngramAuthenticationError if status in (401, 403) else IngramRefused
        return cls(f"{where}: HTTP {status}: {_message(response)}", http_status=status)

    def order_status(self, order_number: str, *, correlation_id: str) -> OrderStatus:
        """The order's current status (Get Order Details v6.1)."""
        path = f"/resellers/v6.1/orders/{quote(order_number, safe='')}"
        where = f"Ingram connection {self.ingram_conn_id!r}: order {order_number} (GET)"

        def attempt():
            response = self._exchange("GET", path, correlation_id)
            self._raise_if_busy(response)
            return response

        response = self._with_retries(attempt, lambda reason: IngramUnavailable(f"{where}: {reason}"))
        if response.status_code != 200:
            raise self._refused(where, response)
        payload = json_object(response) or {}
        status = text_value(payload.get("orderStatus"))
        if status is None:
            raise IngramResponseError(f"{where}: the answer has no orderStatus")
        return OrderStatus(order_number=order_number, status=status.upper())

    def cancel_order(self, order_number: str, *, correlation_id: str) -> None:
        """Cancel the order (``DELETE /resellers/v6/orders/{OrderNumber}``) under ``correlation_id``.

        Returns when Ingram answered 200. A 429 is retried (nothing was executed); an unknown
        outcome raises :class:`IngramOutcomeUnknown` and is never resent here.
        """
        path = f"/resellers/v6/orders/{quote(order_number, safe='')}"
        where = f"Ingram connection {self.ingram_conn_id!r}: cancel order {order_number} (correlation {correlation_id})"

        def attempt():
            try:
                response = self._exchange("DELETE", path, correlation_id)
            except Retryable as exc:  # the request may have been executed: no blind resend
                raise IngramOutcomeUnknown(f"{where}: {exc}") from exc
            if response.status_code == 429:
                raise Retryable("HTTP 429", retry_after(response.headers.get("Retry-After")))
            if response.status_code >= 500:
                raise IngramOutcomeUnknown(f"{where}: HTTP {response.status_code}: {_message(response)}")
            return response

        response = self._with_retries(attempt, lambda reason: IngramUnavailable(f"{where}: {reason}"))
        if response.status_code not in (200, 204):
            raise self._refused(where, response)


def _message(response) -> str:
    """What an Ingram error says: ``errors[].message``, an Apigee ``fault``, a SOAP-ish ``faultstring``,
    OAuth's ``error_description``; else the reason phrase."""
    payload = json_object(response) or {}
    errors = payload.get("errors")
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        return "; ".join(str(e.get("message") or e.get("type") or e) for e in errors if isinstance(e, dict))
    fault = payload.get("fault")
    if isinstance(fault, dict) and fault.get("faultstring"):
        return str(fault["faultstring"])
    return str(payload.get("faultstring") or payload.get("error_description") or payload.get("error")
               or response.reason_phrase or "")
