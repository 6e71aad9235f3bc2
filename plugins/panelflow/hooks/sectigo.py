"""Sectigo's reseller API (``CollectSSL``): an order's status and, once issued, its certificate.

Why this API: a hosting provider buys Sectigo certificates as a web-host reseller, and the
reseller API (``https://secure.trust-provider.com/products/…``, documented at
docs.sectigo.com/sps) is where those orders live — ``AutoApplySSL`` places them, ``CollectSSL``
reports and hands them back. Sectigo Certificate Manager's REST API serves enterprise accounts
with their own CA profiles, not a reseller's orders, so it is not used.

One reseller account = one Airflow connection (type ``panelflow_sectigo``, ``sectigo`` by
default): host = the API's base URL (default ``https://secure.trust-provider.com/products``; the
sandbox's is ``http://127.0.0.1:<port>/products``), login = the account's loginName, password = its
loginPassword, and extras:

- ``ca_bundle``: a PEM file of the roots an issued chain must build to (default: the Mozilla
  roots of ``certifi``, which hold Sectigo's public roots; the sandbox's root for tests);
- ``poll_minutes``: how long an order is left alone after it was asked about (default 180:
  Sectigo asks resellers to poll an order no more often than every three hours);
- ``timeout`` (default 60), ``retries`` (default 4), ``backoff``, ``max_retry_wait``.

The credentials travel only in the POST body (Sectigo's API has no other way); nothing here logs
it. Requests are made one at a time (Sectigo: no concurrent ``CollectSSL`` calls).

``CollectSSL`` is asked with ``queryType=1`` (status, certificate and intermediates/roots),
``responseType=3`` (individually encoded), ``responseEncoding=0`` (Base64), ``responseFormat=1``
(URL-encoded fields), ``showValidityPeriod=Y`` and ``showFQDN=Y``. ``errorCode`` 2/1 is issued, 0
being processed, -20 rejected and -21 revoked (order states, answered as such); -16 is
:class:`SectigoAuthenticationError`, another negative code :class:`SectigoRequestError` with
Sectigo's ``errorMessage``. Errors come with HTTP 200; a 429, a 5xx, a timeout or a lost
connection is retried and then :class:`SectigoUnavailable`.
"""

from __future__ import annotations

import base64
import binascii
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qs

from panelflow.hooks._extras import extra_number
from panelflow.hooks._http import HttpApiHook, RequestRefused, text_value

DEFAULT_BASE_URL = "https://secure.trust-provider.com/products"
STATES = {2: "issued", 1: "issued", 0: "pending", -20: "rejected", -21: "revoked"}
AUTHENTICATION_FAILED = -16


class SectigoError(Exception):
    """Any failure to get an answer from Sectigo."""


class SectigoUnavailable(SectigoError):
    """Busy or failing through every attempt."""


class SectigoRequestError(SectigoError, RequestRefused):
    """Sectigo refused the request (a negative ``errorCode``); resending it unchanged will not help."""


class SectigoAuthenticationError(SectigoRequestError):
    """loginName/loginPassword refused (-16): every order fails the same way."""


class SectigoResponseError(SectigoError):
    """An answer that is not what the API documents."""


@dataclass(frozen=True)
class OrderStatus:
    """CollectSSL's answer for one order."""

    order_number: str
    state: str                       # issued, pending, rejected, revoked
    vendor_status: str | None        # Sectigo's certificateStatus text
    fqdn: str | None
    not_before: datetime | None
    not_after: datetime | None
    leaf_pem: str | None             # set whenever state is issued
    chain_pems: tuple[str, ...] = ()


class SectigoHook(HttpApiHook):
    """One ``httpx.Client`` per hook (connection reuse across a run's requests); ``close()`` it."""

    conn_name_attr = "sectigo_conn_id"
    default_conn_name = "sectigo"
    conn_type = "panelflow_sectigo"
    hook_name = "panelflow Sectigo reseller API"

    DEFAULT_BASE_URL = DEFAULT_BASE_URL
    BASE_URL_NAME = "the Sectigo reseller API's base URL"
    USER_AGENT = "panelflow-sectigo"
    DEFAULT_TIMEOUT = 60.0
    DEFAULT_RETRIES = 4
    DEFAULT_POLL_MINUTES = 180.0

    def __init__(self, sectigo_conn_id: str = default_conn_name, *, sleep=time.sleep, **kwargs):
        super().__init__(sectigo_conn_id, sleep=sleep, **kwargs)
        self.ca_bundle: str | None = None
        self.poll_minutes = self.DEFAULT_POLL_MINUTES
        self._credentials: dict[str, str] = {}

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return cls._rest_form(hidden=[], labels={"login": "loginName", "password": "loginPassword"},
                              host=DEFAULT_BASE_URL,
                              extra='{"ca_bundle": "/etc/ssl/certs/ca-certificates.crt", "poll_minutes": 180,'
                                    ' "timeout": 60, "retries": 4}')

    def _configure(self, conn, extra: dict[str, Any]) -> dict[str, str]:
        """The account's credentials (sent in each form), the trust anchors' file, the poll interval."""
        if not conn.login or not conn.password:
            raise ValueError(f"connection {self.sectigo_conn_id!r} needs login (loginName) and password"
                             " (loginPassword)")
        self._credentials = {"loginName": conn.login, "loginPassword": conn.password}
        self.ca_bundle = text_value(extra.get("ca_bundle"))
        self.poll_minutes = extra_number(self.sectigo_conn_id, extra, "poll_minutes", self.DEFAULT_POLL_MINUTES,
                                         minimum=0.0)
        return {"Accept": "text/plain"}

    # -- requests -------------------------------------------------------------------------------

    def _collect(self, order_number: str) -> dict[str, list[str]]:
        where = f"Sectigo {self.sectigo_conn_id!r}: CollectSSL order {order_number}"
        return self._with_retries(lambda: self._once(order_number, where),
                                  lambda reason: SectigoUnavailable(f"{where}: {reason}"))

    def _once(self, order_number: str, where: str) -> dict[str, list[str]]:
        form = {**self._credentials, "orderNumber": order_number, "queryType": "1", "responseType": "3",
                "responseEncoding": "0", "responseFormat": "1", "showValidityPeriod": "Y", "showFQDN": "Y"}
        response = self._answer("POST", "/download/CollectSSL", data=form)
        if response.status_code != 200:
            raise SectigoRequestError(f"{where}: HTTP {response.status_code} {response.reason_phrase}",
                                      http_status=response.status_code)
        fields = parse_qs(response.text.strip(), keep_blank_values=True)
        code = _int((fields.get("errorCode") or [None])[0])
        if code is None:
            raise SectigoResponseError(f"{where}: the answer has no errorCode: {response.text[:200]!r}")
        if code < 0 and code not in STATES:
            message = f"{where}: errorCode {code}: {_first(fields, 'errorMessage') or 'no message'}"
            error = SectigoAuthenticationError if code == AUTHENTICATION_FAILED else SectigoRequestError
            raise error(message, http_status=200, code=code)
        return fields

    # -- the API --------------------------------------------------------------------------------

    def order_status(self, order_number: str) -> OrderStatus:
        """The order's state; the certificate and its chain (PEM) when Sectigo has issued it."""
        fields = self._collect(order_number)
        code = int(fields["errorCode"][0])
        where = f"Sectigo {self.sectigo_conn_id!r}: order {order_number}"
        leaf = chain = None
        if STATES[code] == "issued":  # asked with queryType=1: the certificate comes with the status
            leaf = [_pem(v, where) for v in fields.get("certificate", [])]
            chain = tuple(_pem(v, where) for v in fields.get("caCertificate", []))
            if len(leaf) != 1:
                raise SectigoResponseError(f"{where}: issued (errorCode {code}), but {len(leaf)} certificates in"
                                           " 'certificate'")
        return OrderStatus(order_number=order_number, state=STATES[code],
                           vendor_status=text_value(_first(fields, "certificateStatus")),
                           fqdn=text_value(_first(fields, "fqdn")), not_before=_epoch(_first(fields, "notBefore")),
                           not_after=_epoch(_first(fields, "notAfter")), leaf_pem=leaf[0] if leaf else None,
                           chain_pems=chain or ())


def _first(fields: dict[str, list[str]], name: str) -> str | None:
    values = fields.get(name)
    return values[0] if values else None


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _epoch(value: str | None) -> datetime | None:
    number = _int(value)
    return datetime.fromtimestamp(number, tz=timezone.utc) if number is not None else None


def _pem(value: str, where: str) -> str:
    """A certificate field as PEM: Sectigo sends Base64 DER (``responseEncoding=0``); PEM passes as is."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    value = value.strip()
    try:
        if value.startswith("-----BEGIN"):
            return x509.load_pem_x509_certificate(value.encode()).public_bytes(Encoding.PEM).decode()
        der = base64.b64decode("".join(value.split()), validate=True)
        return x509.load_der_x509_certificate(der).public_bytes(Encoding.PEM).decode()
    except (ValueError, binascii.Error) as exc:
        raise SectigoResponseError(f"{where}: a certificate field is not a certificate ({exc})") from exc
