"""The one HTTP base of panelflow's REST hooks (Partner Center, Azure Retail Prices, DigiCert, Sectigo).

They reach different vendors, but the ways a REST call goes wrong are the same everywhere, so they
are handled in one place: the connection is read once per hook (base URL, timeout, retry extras),
a timeout or lost connection is :class:`Retryable`, a 429 or 5xx is :class:`Retryable` carrying what
``Retry-After`` says, and the tenacity loop waits that (capped) or backs off exponentially with
jitter. What stays with each hook is its own: its defaults, its headers, and the errors it raises.
(The payment gateway is not on this base: it speaks Stripe through Stripe's own library.)

Settings come from the connection's extras ``timeout``, ``retries``, ``backoff`` and
``max_retry_wait``, each with the hook's ``DEFAULT_…`` when absent.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from datetime import date, datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any, Callable, TypeVar

from airflow.sdk import BaseHook

from panelflow.hooks._extras import extra_number

T = TypeVar("T")


class Retryable(Exception):
    """An answer (or its absence) worth another attempt; ``retry_after`` in seconds if the server said."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class RequestRefused(Exception):
    """A 4xx: the server read the request and refused it, so resending it unchanged will not help."""

    def __init__(self, message: str, *, http_status: int, code: Any = None):
        super().__init__(message)
        self.http_status = http_status
        self.code = code


@dataclass(frozen=True)
class HttpSettings:
    """What the hook read from its connection, once: a hook never re-reads it mid-run."""

    base_url: str
    timeout: float
    retries: int
    backoff: float
    max_retry_wait: float

    @property
    def attempts(self) -> str:
        return f"gave up after {self.retries} attempt{'s' if self.retries > 1 else ''}"


class HttpApiHook(BaseHook):
    """One ``httpx.Client`` per hook (connection reuse across a run's requests); ``close()`` it.

    A subclass names its connection attribute (``conn_name_attr``), its defaults, and
    :meth:`_configure` — what else it needs from the connection, and the headers it sends.
    """

    conn_name_attr: str
    DEFAULT_BASE_URL: str | None = None   # None: the connection must name the host
    BASE_URL_NAME = "the API's base URL"  # how a missing host is explained
    USER_AGENT = "panelflow"
    DEFAULT_TIMEOUT = 30.0
    DEFAULT_RETRIES = 6
    DEFAULT_BACKOFF = 1.0
    DEFAULT_MAX_RETRY_WAIT = 120.0

    def __init__(self, conn_id: str, *, sleep: Callable[[float], None] = time.sleep, **kwargs):
        super().__init__(**kwargs)
        setattr(self, self.conn_name_attr, conn_id)
        self._sleep = sleep
        self._client = None
        self.settings: HttpSettings | None = None

    @property
    def _cid(self) -> str:
        return getattr(self, self.conn_name_attr)

    @classmethod
    def _rest_form(cls, *, hidden: list[str], labels: dict[str, str], host: str, extra: str) -> dict[str, Any]:
        """The connection form every REST hook shows: the host is the API's base URL, and so on."""
        return {
            "hidden_fields": hidden,
            "relabeling": {"host": "API base URL", **labels, "schema": "Scheme (http/https)"},
            "placeholders": {"host": host, "schema": "https", "extra": extra},
        }

    # -- connection -----------------------------------------------------------------------------

    def _configure(self, conn, extra: dict[str, Any]) -> dict[str, str]:
        """Check and keep what the subclass needs from the connection; the headers every request carries."""
        return {}

    def _api_url(self, conn) -> str:
        return base_url_of(conn, self._cid, self.DEFAULT_BASE_URL, missing=self.BASE_URL_NAME)

    def _read_settings(self, conn) -> HttpSettings:
        cid, extra = self._cid, conn.extra_dejson
        return HttpSettings(
            base_url=self._api_url(conn),
            timeout=extra_number(cid, extra, "timeout", float(self.DEFAULT_TIMEOUT), minimum=0.1),
            retries=extra_number(cid, extra, "retries", int(self.DEFAULT_RETRIES), kind=int, minimum=1),
            backoff=extra_number(cid, extra, "backoff", float(self.DEFAULT_BACKOFF), minimum=0.0),
            max_retry_wait=extra_number(cid, extra, "max_retry_wait", float(self.DEFAULT_MAX_RETRY_WAIT),
                                          minimum=0.0))

    def get_conn(self):
        """The hook's ``httpx.Client``: base URL, timeout and headers from the connection, read once."""
        if self._client is None:
            import httpx

            conn = self.get_connection(self._cid)
            headers = self._configure(conn, conn.extra_dejson)
            self.settings = self._read_settings(conn)
            self._client = httpx.Client(
                base_url=self.settings.base_url, timeout=httpx.Timeout(self.settings.timeout),
                headers={"Accept": "application/json", "User-Agent": self.USER_AGENT, **headers},
                follow_redirects=False,  # a redirect would replay the key or token to another host
            )
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- one exchange, and the retrying around it -----------------------------------------------

    @staticmethod
    def _send(client, method: str, url: str, **kwargs):
        """One HTTP exchange; a timeout or lost connection is retryable (the outcome is unknown)."""
        import httpx

        try:
            return client.request(method, url, **kwargs)
        except httpx.TimeoutException as exc:
            raise Retryable(f"no answer in time ({type(exc).__name__})") from exc
        except httpx.TransportError as exc:
            raise Retryable(f"{type(exc).__name__}: {exc}") from exc

    @staticmethod
    def _raise_if_busy(response) -> None:
        """429 and every 5xx are worth another attempt, after what ``Retry-After`` says."""
        if response.status_code == 429 or response.status_code >= 500:
            raise Retryable(f"HTTP {response.status_code} {error_message(response)}".strip(),
                            retry_after(response.headers.get("Retry-After")))

    def _answer(self, method: str, url: str, **kwargs):
        """One exchange whose answer is not a 429 or 5xx (those raise :class:`Retryable`)."""
        response = self._send(self.get_conn(), method, url, **kwargs)
        self._raise_if_busy(response)
        return response

    def _wait(self, retry_state) -> float:
        exc = retry_state.outcome.exception()
        cap = self.settings.max_retry_wait
        if getattr(exc, "retry_after", None) is not None:
            return min(exc.retry_after, cap)
        base = self.settings.backoff * 2 ** (retry_state.attempt_number - 1)
        return min(base + random.uniform(0, base / 10), cap)

    def _with_retries(self, attempt: Callable[[], T], unavailable: Callable[[str], Exception]) -> T:
        """``attempt()`` until it returns, as often as the hook's policy allows while it raises
        :class:`Retryable`; then ``unavailable(reason)``, raised from the last :class:`Retryable`."""
        from tenacity import Retrying, retry_if_exception_type, stop_after_attempt

        self.get_conn()
        try:
            for state in Retrying(stop=stop_after_attempt(self.settings.retries), wait=self._wait,
                                  sleep=self._sleep, retry=retry_if_exception_type(Retryable), reraise=True):
                with state:
                    return attempt()
        except Retryable as exc:
            raise unavailable(f"{exc} ({self.settings.attempts})") from exc
        raise AssertionError("unreachable")  # pragma: no cover


# -- answers --------------------------------------------------------------------------------------


def json_object(response, **loads) -> dict[str, Any] | None:
    """The answer's body as a JSON object, or None (empty, not JSON, or not an object)."""
    try:
        payload = json.loads(response.content, **loads) if response.content else None
    except ValueError:
        return None
    return payload if isinstance(payload, dict) else None


def error_message(response) -> str:
    """What an error answer says, in the shapes the vendors use (``error.message``, OAuth's
    ``error_description``), else the status's reason phrase."""
    payload = json_object(response) or {}
    error = payload.get("error") or payload.get("Error")
    if isinstance(error, dict):
        return str(error.get("message") or error.get("Message") or error.get("code") or response.reason_phrase)
    return str(payload.get("description") or payload.get("error_description") or error or response.reason_phrase
               or "")


def text_value(value: Any) -> str | None:
    """A JSON value as trimmed text; absent or blank → None."""
    if value is None:
        return None
    value = str(value).strip()
    return value or None


def bool_value(value: Any) -> bool | None:
    """A JSON boolean, or None for anything else (a vendor's ``"true"`` is not trusted to mean it)."""
    return value if isinstance(value, bool) else None


def iso_time(value: Any) -> datetime | None:
    """An ISO 8601 moment (``Z`` allowed; no zone means UTC); absent → None."""
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise ValueError(f"not a date/time: {value!r}")
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def iso_date(value: Any) -> date | None:
    """The UTC day of an ISO 8601 moment; absent → None."""
    moment = iso_time(value)
    return moment.astimezone(timezone.utc).date() if moment is not None else None


def retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header: a number of seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def base_url_of(conn, conn_id: str, default: str | None = None, *, missing: str = "the API's base URL") -> str:
    """The API's base URL from a connection: ``host`` as a full URL, or host + ``schema`` (http or
    https, default https) + ``port``; no host → ``default``, or an error naming what is missing."""
    host = (conn.host or "").strip().rstrip("/")
    if not host:
        if default is not None:
            return default
        raise ValueError(f"connection {conn_id!r} has no host ({missing})")
    if "://" in host:
        return host
    scheme = (conn.schema or "https").strip().lower()
    if scheme not in ("http", "https"):
        raise ValueError(f"connection {conn_id!r}: schema must be http or https, not {scheme!r}")
    return f"{scheme}://{host}:{conn.port}" if conn.port else f"{scheme}://{host}"


def oauth_token(response, where: str, *, refused: type, malformed: type, message=error_message,
                default_lifetime: float | None = None, max_lifetime: float | None = None) -> tuple[str, float]:
    """A client-credentials sign-in's answer (RFC 6749 5.1/5.2) read alike for every vendor: the
    token — masked in every log from here on — and its lifetime in seconds. A refusal raises
    ``refused`` with the server's words; an answer without a token, or without a lifetime when no
    ``default_lifetime`` stands in for it, raises ``malformed``."""
    payload = json_object(response) or {}
    if response.status_code != 200:
        raise refused(f"{where} refused (HTTP {response.status_code}): {message(response)}",
                      http_status=response.status_code, code=payload.get("error"))
    token, lifetime = payload.get("access_token"), payload.get("expires_in")
    try:
        lifetime = float(lifetime)
    except (TypeError, ValueError):
        lifetime = default_lifetime
    if not isinstance(token, str) or not token or lifetime is None:
        raise malformed(f"{where}: the token answer has no access_token/expires_in")
    try:  # the token never reaches a log in clear, should anything print it
        from airflow.sdk.log import mask_secret

        mask_secret(token)
    except Exception:  # pragma: no cover - masking is a safeguard, not a precondition
        pass
    return token, min(lifetime, max_lifetime) if max_lifetime is not None else lifetime
