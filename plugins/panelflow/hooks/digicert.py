"""DigiCert CertCentral's Services API (v2): an order's status and its issued certificate.

One DigiCert account = one Airflow connection (type ``panelflow_digicert``, ``digicert`` by
default): host = the API's base URL (default ``https://www.digicert.com/services/v2``; CertCentral
Europe is ``https://certcentral.digicert.eu/services/v2``; the sandbox's is ``http://127.0.0.1:<port>/services/v2``),
password = the API key, and extras:

- ``ca_bundle``: a PEM file of the roots an issued chain must build to (default: the Mozilla
  roots of ``certifi`` — DigiCert's public roots are among them; the sandbox's root for tests);
- ``poll_minutes``: how long an order is left alone after it was asked about (default 10: a
  ProvisioningWork run);
- ``timeout`` (default 30), ``retries`` (default 5), ``backoff`` (default 1), ``max_retry_wait``
  (default 120): see ``panelflow.hooks._http``.

The key travels only in the ``X-DC-DEVKEY`` header; nothing here logs it.

API (as DigiCert documents it; what ``include/sandbox/digicert.py`` emulates)::

    GET /order/certificate/{order_id}                       Order info: status, product, price,
        {"id", "status", "product": {"name_id"}, "validity_years", "price", "currency",
         "certificate": {"id", "common_name", "dns_names", …}}
    GET /certificate/{certificate_id}/download/format/pem_all
        the leaf, its intermediates and the root, PEM, in that order
    errors: {"errors": [{"code", "message"}]}

A 429 (``request_limit_exceeded``, honouring ``Retry-After``), a 5xx, a timeout or a lost
connection is retried with backoff and then :class:`DigiCertUnavailable`; 401/403 is
:class:`DigiCertAuthenticationError`, 404 :class:`DigiCertNotFound`, another 4xx
:class:`DigiCertRequestError`, an answer that is not the documented shape
:class:`DigiCertResponseError` — none of these retried.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import quote

from panelflow.hooks._extras import extra_number
from panelflow.hooks._http import HttpApiHook, RequestRefused, json_object, text_value

DEFAULT_BASE_URL = "https://www.digicert.com/services/v2"


class DigiCertError(Exception):
    """Any failure to get an answer from CertCentral."""


class DigiCertUnavailable(DigiCertError):
    """Rate-limited (429), failing (5xx) or unreachable through every attempt."""


class DigiCertRequestError(DigiCertError, RequestRefused):
    """CertCentral refused the request (4xx); resending it unchanged will not help."""


class DigiCertAuthenticationError(DigiCertRequestError):
    """The API key was refused or lacks the permission: every order fails the same way."""


class DigiCertNotFound(DigiCertRequestError):
    """No such order or certificate in this account."""


class DigiCertResponseError(DigiCertError):
    """An answer that is not what the API documents."""


@dataclass(frozen=True)
class Order:
    """What step 2 needs of an Order info answer."""

    id: str
    status: str                  # DigiCert's: pending, needs_approval, issued, rejected, canceled, revoked, …
    product: str | None
    certificate_id: str | None   # set once a certificate exists for the order
    common_name: str | None
    dns_names: tuple[str, ...]
    price: Decimal | None        # what DigiCert charges the account for the order
    currency: str | None


@dataclass(frozen=True)
class Certificates:
    """A downloaded certificate: the leaf and the rest of the chain DigiCert sent, PEM each."""

    leaf_pem: str
    chain_pems: tuple[str, ...]


class DigiCertHook(HttpApiHook):
    """One ``httpx.Client`` per hook (connection reuse across a run's requests); ``close()`` it."""

    conn_name_attr = "digicert_conn_id"
    default_conn_name = "digicert"
    conn_type = "panelflow_digicert"
    hook_name = "panelflow DigiCert CertCentral"

    DEFAULT_BASE_URL = DEFAULT_BASE_URL
    BASE_URL_NAME = "the CertCentral Services API's base URL"
    USER_AGENT = "panelflow-digicert"
    DEFAULT_RETRIES = 5
    DEFAULT_POLL_MINUTES = 10.0

    def __init__(self, digicert_conn_id: str = default_conn_name, *, sleep=time.sleep, **kwargs):
        super().__init__(digicert_conn_id, sleep=sleep, **kwargs)
        self.ca_bundle: str | None = None
        self.poll_minutes = self.DEFAULT_POLL_MINUTES

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return cls._rest_form(hidden=["login"], labels={"password": "API key (X-DC-DEVKEY)"},
                              host=DEFAULT_BASE_URL,
                              extra='{"ca_bundle": "/etc/ssl/certs/ca-certificates.crt", "poll_minutes": 10,'
                                    ' "timeout": 30, "retries": 5}')

    def _configure(self, conn, extra: dict[str, Any]) -> dict[str, str]:
        """The API key (the ``X-DC-DEVKEY`` header), the trust anchors' file and the poll interval."""
        if not conn.password:
            raise ValueError(f"connection {self.digicert_conn_id!r} has no password (the API key)")
        self.ca_bundle = text_value(extra.get("ca_bundle"))
        self.poll_minutes = extra_number(self.digicert_conn_id, extra, "poll_minutes", self.DEFAULT_POLL_MINUTES,
                                         minimum=0.0)
        return {"X-DC-DEVKEY": conn.password}

    # -- requests -------------------------------------------------------------------------------

    def _get(self, path: str, params: dict[str, Any] | None = None, *, pem: bool = False):
        where = f"DigiCert {self.digicert_conn_id!r}: GET {path}"
        return self._with_retries(lambda: self._once(path, params, pem, where),
                                  lambda reason: DigiCertUnavailable(f"{where}: {reason}"))

    def _once(self, path: str, params: dict[str, Any] | None, pem: bool, where: str):
        response = self._answer("GET", path, params=params)
        status = response.status_code
        if status == 200:
            if pem:
                return response.text
            payload = json_object(response)
            if payload is None:
                raise DigiCertResponseError(f"{where}: the answer is not a JSON object")
            return payload
        code, message = _error(response)
        text = f"{where}: HTTP {status} {code}: {message}"
        if status in (401, 403):
            raise DigiCertAuthenticationError(text, http_status=status, code=code)
        if status == 404:
            raise DigiCertNotFound(text, http_status=status, code=code)
        raise DigiCertRequestError(text, http_status=status, code=code)

    # -- the API --------------------------------------------------------------------------------

    def get_order(self, order_id: str) -> Order:
        payload = self._get(f"/order/certificate/{quote(str(order_id), safe='')}")
        cert = payload.get("certificate") if isinstance(payload.get("certificate"), dict) else {}
        product = payload.get("product") if isinstance(payload.get("product"), dict) else {}
        status = text_value(payload.get("status"))
        names = cert.get("dns_names") or []
        if str(payload.get("id")) != str(order_id) or status is None or not isinstance(names, list):
            raise DigiCertResponseError(f"DigiCert {self.digicert_conn_id!r}: order {order_id}: not an order"
                                        f" answer: {payload!r:.200}")
        return Order(id=str(payload["id"]), status=status.lower(),
                     product=text_value(product.get("name_id") or payload.get("product_name_id")),
                     certificate_id=text_value(cert.get("id")), common_name=text_value(cert.get("common_name")),
                     dns_names=tuple(str(n).strip().lower() for n in names if n), price=_money(payload.get("price")),
                     currency=text_value(payload.get("currency")))

    def download(self, certificate_id: str) -> Certificates:
        """The certificate and the rest of its chain (``pem_all``: end-entity, intermediates, root).

        The leaf is told by what it is — the one certificate that is not a CA — not by its place
        in the bundle, so an order of the bundle other than DigiCert's cannot swap it for the root.
        """
        from cryptography import x509
        from cryptography.hazmat.primitives.serialization import Encoding

        where = f"DigiCert {self.digicert_conn_id!r}: certificate {certificate_id}"
        body = self._get(f"/certificate/{quote(str(certificate_id), safe='')}/download/format/pem_all", pem=True)
        try:
            certs = x509.load_pem_x509_certificates(body.encode())
        except ValueError as exc:
            raise DigiCertResponseError(f"{where}: the download is not PEM certificates ({exc})") from exc
        leaves = [c for c in certs if not _is_ca(c)]
        if len(leaves) != 1:
            raise DigiCertResponseError(f"{where}: {len(leaves)} end-entity certificates in the download, not one")
        return Certificates(leaf_pem=leaves[0].public_bytes(Encoding.PEM).decode(),
                            chain_pems=tuple(c.public_bytes(Encoding.PEM).decode() for c in certs if c is not leaves[0]))


def _is_ca(certificate) -> bool:
    from cryptography import x509

    try:
        return certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def _error(response) -> tuple[str | None, str]:
    """DigiCert's ``{"errors": [{"code", "message"}]}`` (the first), else the reason phrase."""
    errors = (json_object(response) or {}).get("errors")
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        return text_value(errors[0].get("code")), str(errors[0].get("message") or response.reason_phrase)
    return None, response.reason_phrase


def _money(value: Any) -> Decimal | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return Decimal(str(value)).quantize(Decimal("0.01"))
    except InvalidOperation:
        return None
