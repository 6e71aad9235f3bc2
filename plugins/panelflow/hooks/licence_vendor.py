"""The panel vendor's licence service: the pinned signing key, the licence file, the current licence.

One Airflow connection (type ``panelflow_licence_vendor``, ``licence_vendor`` by default) says how
this installation's licence is obtained and trusted:

- extras ``public_key`` (the vendor's Ed25519 public key: PEM, or the 32 raw bytes in base64) or
  ``public_key_file`` (a PEM file) — **required**: the key is pinned here, never taken from what
  the vendor or the file sends, so a document signed by anyone else is refused;
- extra ``licence_file``: a licence file on this machine (what the vendor hands out at purchase);
- host = the vendor's licence service (``https://licensing.vendor.example``; HTTPS only: the
  licence key travels in the request) and password = this installation's licence key; no host: no
  refresh, the file alone;
- extras ``installation_id`` (a licence naming another installation is refused), ``ca_file`` (a
  PEM bundle the service's TLS certificate must chain to; default the system's roots — the sandbox's
  own CA in tests), ``alert_to`` (who gets the 90 %/100 % usage alerts), ``timeout``, ``retries``,
  ``backoff``, ``max_retry_wait`` (see ``panelflow.hooks._http``).

The service (what ``include/sandbox/licence_vendor.py`` serves)::

    GET /v1/licences/current?installation=<installation_id>
        Authorization: Bearer <licence key>
        200 {"payload": "<base64 licence JSON>", "signature": "<base64 Ed25519 signature of the payload bytes>"}
        401 {"error": {"code": "unauthorized", "message"}} · 404 {"error": {"code": "not_found", …}}

The licence file holds the same JSON envelope. This hook fetches and reads; whether a document is
good enough to use (signature, installation, fields) is the LicenseWork step's decision. The
licence key travels only in the ``Authorization`` header; nothing here logs it.
"""

from __future__ import annotations

import base64
import hashlib
import time
from dataclasses import dataclass
from typing import Any

from panelflow.hooks._http import HttpApiHook, RequestRefused, error_message, json_object, text_value


class LicenceVendorError(Exception):
    """Any failure to get the current licence from the vendor."""


class LicenceVendorUnavailable(LicenceVendorError):
    """Throttled, failing (5xx) or unreachable (TLS refused included) through every attempt."""


class LicenceVendorRefused(LicenceVendorError, RequestRefused):
    """The service refused the request (401: the licence key; 404: no licence for this installation)."""


@dataclass(frozen=True)
class LicenceSettings:
    """What the connection says about the licence, read without touching the network."""

    public_key: Any              # cryptography's Ed25519PublicKey
    key_fingerprint: str         # sha256 of the raw 32-byte key, hex
    licence_file: str | None
    installation_id: str | None
    alert_to: str | None
    refresh: bool                # a vendor service is configured (host)


class LicenceVendorHook(HttpApiHook):
    """``licence_settings()`` reads the connection; ``fetch_current()`` asks the vendor (HTTPS)."""

    conn_name_attr = "licence_vendor_conn_id"
    default_conn_name = "licence_vendor"
    conn_type = "panelflow_licence_vendor"
    hook_name = "panelflow licence vendor"

    BASE_URL_NAME = "the vendor's licence service URL"
    USER_AGENT = "panelflow-licence"
    DEFAULT_RETRIES = 3

    def __init__(self, licence_vendor_conn_id: str = default_conn_name, *, sleep=time.sleep, **kwargs):
        super().__init__(licence_vendor_conn_id, sleep=sleep, **kwargs)
        self._ca_file: str | None = None

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return cls._rest_form(hidden=["login"], labels={"password": "Licence key"},
                              host="https://licensing.vendor.example",
                              extra='{"public_key": "<vendor Ed25519 public key, PEM or base64>",'
                                    ' "licence_file": "/etc/panelflow/licence.json", "installation_id": "…",'
                                    ' "ca_file": "/etc/ssl/certs/ca-certificates.crt", "alert_to": "ops@example.com"}')

    # -- connection -----------------------------------------------------------------------------

    def licence_settings(self) -> LicenceSettings:
        """The pinned key and the rest of the licence settings (the connection must exist)."""
        conn = self.get_connection(self._cid)
        extra = conn.extra_dejson
        key = _public_key(self._cid, extra)
        from cryptography.hazmat.primitives import serialization

        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return LicenceSettings(public_key=key, key_fingerprint=hashlib.sha256(raw).hexdigest(),
                               licence_file=text_value(extra.get("licence_file")),
                               installation_id=text_value(extra.get("installation_id")),
                               alert_to=text_value(extra.get("alert_to")), refresh=bool((conn.host or "").strip()))

    def _api_url(self, conn) -> str:
        url = super()._api_url(conn)
        if not url.lower().startswith("https://"):
            raise ValueError(f"connection {self._cid!r}: the licence service must be reached over HTTPS, not {url!r}")
        return url

    def _configure(self, conn, extra: dict[str, Any]) -> dict[str, str]:
        if not conn.password:
            raise ValueError(f"connection {self._cid!r} has no password (the licence key)")
        self._ca_file = text_value(extra.get("ca_file"))
        return {"Authorization": f"Bearer {conn.password}"}

    def get_conn(self):
        """The base client, verifying the service's certificate against ``ca_file`` when given."""
        if self._client is None:
            import ssl

            import httpx

            conn = self.get_connection(self._cid)
            headers = self._configure(conn, conn.extra_dejson)
            self.settings = self._read_settings(conn)
            verify = ssl.create_default_context(cafile=self._ca_file) if self._ca_file else True
            self._client = httpx.Client(
                base_url=self.settings.base_url, timeout=httpx.Timeout(self.settings.timeout), verify=verify,
                headers={"Accept": "application/json", "User-Agent": self.USER_AGENT, **headers},
                follow_redirects=False)
        return self._client

    # -- the service ----------------------------------------------------------------------------

    def fetch_current(self, installation_id: str | None) -> dict[str, Any]:
        """The vendor's current licence envelope for this installation (not verified here)."""
        where = f"licence vendor {self._cid!r}: GET /v1/licences/current"
        params = {"installation": installation_id} if installation_id else None
        response = self._with_retries(lambda: self._answer("GET", "/v1/licences/current", params=params),
                                      lambda reason: LicenceVendorUnavailable(f"{where}: {reason}"))
        if response.status_code != 200:
            raise LicenceVendorRefused(f"{where}: HTTP {response.status_code}: {error_message(response)}",
                                       http_status=response.status_code)
        payload = json_object(response)
        if payload is None:
            raise LicenceVendorError(f"{where}: the answer is not a JSON object")
        return payload


def _public_key(conn_id: str, extra: dict[str, Any]):
    """The pinned Ed25519 key from ``public_key`` (PEM or base64 raw) or ``public_key_file`` (PEM)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    text = text_value(extra.get("public_key"))
    path = text_value(extra.get("public_key_file"))
    if text is None and path is not None:
        with open(path, encoding="ascii") as handle:
            text = handle.read()
    if text is None:
        raise ValueError(f"connection {conn_id!r} pins no licence signing key"
                         " (extra 'public_key' or 'public_key_file')")
    try:
        if "BEGIN PUBLIC KEY" in text:
            key = serialization.load_pem_public_key(text.encode())
        else:
            key = Ed25519PublicKey.from_public_bytes(base64.b64decode(text, validate=True))
    except ValueError as exc:
        raise ValueError(f"connection {conn_id!r}: the licence signing key is unreadable: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"connection {conn_id!r}: the licence signing key is not an Ed25519 key")
    return key
