"""Plumbing for panelflow's REST hooks (payment gateway, registrar, Partner Center, Azure Retail
Prices): the base URL from a connection, and retrying HTTP.

Settings come from the connection's extras (``timeout``, ``retries``, ``backoff``,
``max_retry_wait``); a timeout, a lost connection, a 429 or a 5xx is retried by tenacity,
waiting what ``Retry-After`` says (capped) or exponentially with jitter.
"""

from __future__ import annotations

import random
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any


class Retryable(Exception):
    """An answer (or its absence) worth another attempt; ``retry_after`` in seconds if the server said."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class RetryingHttp:
    """Retry settings from a connection's extras, and the tenacity loop honouring ``Retry-After``."""

    DEFAULT_TIMEOUT = 30.0
    DEFAULT_RETRIES = 6
    DEFAULT_BACKOFF = 1.0
    DEFAULT_MAX_RETRY_WAIT = 120.0

    _sleep: Any
    _settings: dict[str, float]

    def _read_settings(self, extra: dict[str, Any]) -> None:
        self._settings = {
            "timeout": max(0.1, float(extra.get("timeout", self.DEFAULT_TIMEOUT))),
            "retries": max(1, int(extra.get("retries", self.DEFAULT_RETRIES))),
            "backoff": max(0.0, float(extra.get("backoff", self.DEFAULT_BACKOFF))),
            "max_retry_wait": max(0.0, float(extra.get("max_retry_wait", self.DEFAULT_MAX_RETRY_WAIT))),
        }

    def _wait(self, retry_state) -> float:
        exc = retry_state.outcome.exception()
        cap = self._settings["max_retry_wait"]
        if getattr(exc, "retry_after", None) is not None:
            return min(exc.retry_after, cap)
        base = self._settings["backoff"] * 2 ** (retry_state.attempt_number - 1)
        return min(base + random.uniform(0, base / 10), cap)

    def _retrying(self):
        from tenacity import Retrying, retry_if_exception_type, stop_after_attempt

        return Retrying(stop=stop_after_attempt(int(self._settings["retries"])), wait=self._wait, sleep=self._sleep,
                        retry=retry_if_exception_type(Retryable), reraise=True)

    @staticmethod
    def _send(client, method: str, url: str, **kwargs):
        """One HTTP exchange; a timeout or lost connection is retryable."""
        import httpx

        try:
            return client.request(method, url, **kwargs)
        except httpx.TimeoutException as exc:
            raise Retryable(f"no answer in time ({type(exc).__name__})") from exc
        except httpx.TransportError as exc:
            raise Retryable(f"{type(exc).__name__}: {exc}") from exc

    def _attempts(self) -> str:
        n = int(self._settings["retries"])
        return f"gave up after {n} attempt{'s' if n > 1 else ''}"


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
