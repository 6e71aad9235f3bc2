"""Card charges through the payment gateway's HTTP API (Stripe-like), for BillingWork.

The gateway is an Airflow connection (``payment_gateway``, type ``panelflow_payment_gateway``):
host = the API's base URL (``https://api.gateway.example`` or a bare host name with schema
``http``/``https`` and port), password = the secret API key, extra ``timeout`` (seconds a
request may take, default 10). The key travels only in the ``Authorization`` header; Airflow's
secrets masker hides it in task logs and nothing here logs it.

Every charge carries an idempotency key. The hook tells apart the three things a charge request
can end in, because the caller's next move depends on which:

- an answer — :class:`ChargeApproved` or :class:`ChargeDeclined` — the outcome is known;
- :class:`GatewayUnavailable` (timeout, lost connection, 5xx, 409 "key in use", 429) — the card
  may or may not have been charged. The only safe move is to resend the same request with the
  SAME idempotency key, later, until the gateway answers;
- :class:`GatewayRequestRejected` (400, 401, 404, 422) — the gateway refused the request itself;
  resending it unchanged will not help (:class:`GatewayAuthenticationError`: the API key,
  :class:`IdempotencyKeyConflict`: the key was first used with another body).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from panelflow.hooks._http import HttpApiHook, RequestRefused, Retryable, json_object


class PaymentGatewayError(Exception):
    """Any failure to get an answer to a charge request."""


class GatewayUnavailable(PaymentGatewayError):
    """No answer: whether the card was charged is unknown. Resend with the same idempotency key."""


class GatewayRequestRejected(PaymentGatewayError, RequestRefused):
    """The gateway refused the request (4xx other than a decline); it did not execute it."""


class GatewayAuthenticationError(GatewayRequestRejected):
    """The API key was refused: a configuration error, every request would fail the same way."""


class IdempotencyKeyConflict(GatewayRequestRejected):
    """The key was first used with another body: what that first request did is not known here."""


@dataclass(frozen=True)
class ChargeApproved:
    charge_id: str
    amount_minor: int
    currency: str
    created: datetime  # when the gateway made the charge (UTC): the payment's time, whichever try learned it
    replayed: bool = False  # the gateway answered from its idempotency store: an earlier try had charged


@dataclass(frozen=True)
class ChargeDeclined:
    code: str  # the most specific code the gateway gave: "insufficient_funds" rather than "card_declined"
    message: str
    replayed: bool = False


ChargeResult = ChargeApproved | ChargeDeclined


class PaymentGatewayHook(HttpApiHook):
    """One ``httpx.Client`` per hook (connection reuse across a run's charges); ``close()`` it.

    It never retries: a charge whose outcome is unknown is :class:`GatewayUnavailable` at once,
    and only the caller may resend it (same key, later), because only the caller records that it
    is still owed an answer.
    """

    conn_name_attr = "payment_gateway_conn_id"
    default_conn_name = "payment_gateway"
    conn_type = "panelflow_payment_gateway"
    hook_name = "panelflow payment gateway"

    BASE_URL_NAME = "the gateway's base URL"
    USER_AGENT = "panelflow-billing"
    DEFAULT_TIMEOUT = 10.0
    RETRIES = False

    def __init__(self, payment_gateway_conn_id: str = default_conn_name, **kwargs):
        super().__init__(payment_gateway_conn_id, **kwargs)

    @classmethod
    def get_connection_form_widgets(cls) -> dict[str, Any]:
        """The ``timeout`` extra as a form field (for a UI that still reads hook widgets)."""
        from flask_appbuilder.fieldwidgets import BS3TextFieldWidget
        from flask_babel import lazy_gettext
        from wtforms.fields import StringField

        return {"timeout": StringField(lazy_gettext("Request timeout (seconds)"), widget=BS3TextFieldWidget(),
                                       default=str(int(cls.DEFAULT_TIMEOUT)))}

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return cls._rest_form(hidden=["login"], labels={"password": "Secret API key"},
                              host="https://api.gateway.example", extra='{"timeout": 10}')

    # -- connection -----------------------------------------------------------------------------

    def base_url(self, conn=None) -> str:
        return self._api_url(conn or self.get_connection(self.payment_gateway_conn_id))

    def _configure(self, conn, extra: dict[str, Any]) -> dict[str, str]:
        """The secret key, sent as a bearer header and nowhere else."""
        if not conn.password:
            raise ValueError(f"connection {self.payment_gateway_conn_id!r} has no password (the API key)")
        return {"Authorization": f"Bearer {conn.password}"}

    def test_connection(self) -> tuple[bool, str]:
        """Whether the gateway answers and accepts the key, without charging (a lookup of no charge)."""
        import httpx

        try:
            response = self.get_conn().get("/v1/charges/ch_connection_test")
        except httpx.HTTPError as exc:
            return False, f"{type(exc).__name__}: {exc}"
        if response.status_code in (401, 403):
            return False, f"the gateway refused the API key (HTTP {response.status_code})"
        return True, f"the gateway answered (HTTP {response.status_code})"

    # -- charges --------------------------------------------------------------------------------

    def charge(self, source: str, amount_minor: int, currency: str, idempotency_key: str, description: str,
               metadata: dict[str, str] | None = None) -> ChargeResult:
        """Charge ``amount_minor`` (the currency's minor units) to the stored card ``source``.

        Raises :class:`GatewayUnavailable` when the outcome is unknown: the caller must resend
        this exact request (same key, same arguments) later; a different body under the same
        key is refused by the gateway (:class:`IdempotencyKeyConflict`).
        """
        if not isinstance(amount_minor, int) or amount_minor <= 0:
            raise ValueError(f"amount_minor must be a positive integer, not {amount_minor!r}")
        body = {"amount": amount_minor, "currency": currency, "source": source, "description": description,
                "metadata": dict(metadata or {})}
        try:  # sent once: a timeout or lost connection leaves the outcome unknown, for the caller to resend
            response = self._send(self.get_conn(), "POST", "/v1/charges", json=body,
                                  headers={"Idempotency-Key": idempotency_key})
        except Retryable as exc:
            raise GatewayUnavailable(f"charge {idempotency_key}: {exc}") from exc.__cause__
        replayed = response.headers.get("Idempotent-Replayed", "").lower() == "true"
        status = response.status_code
        payload = json_object(response) or {}
        error = payload.get("error") if isinstance(payload.get("error"), dict) else {}
        code = error.get("code")
        message = str(error.get("message") or response.reason_phrase)

        if status in (200, 201):
            return self._approved_or_declined(idempotency_key, payload, replayed)
        if status == 402:
            return ChargeDeclined(code=str(error.get("decline_code") or code or "card_declined"), message=message,
                                  replayed=replayed)
        if status in (401, 403):
            raise GatewayAuthenticationError(
                f"payment gateway refused the API key of connection {self.payment_gateway_conn_id!r}"
                f" (HTTP {status}): {message}", http_status=status, code=code)
        if status == 409 or status == 429 or status >= 500:
            raise GatewayUnavailable(f"charge {idempotency_key}: HTTP {status} {code or ''} {message}".strip())
        if status == 422 or code in ("idempotency_key_reused",) or error.get("type") == "idempotency_error":
            raise IdempotencyKeyConflict(f"charge {idempotency_key}: HTTP {status}: {message}", http_status=status,
                                         code=code)
        raise GatewayRequestRejected(f"charge {idempotency_key}: HTTP {status}: {message}", http_status=status,
                                     code=code)

    def _approved_or_declined(self, key: str, payload: dict[str, Any], replayed: bool) -> ChargeResult:
        state = payload.get("status")
        if state == "succeeded" and payload.get("id"):
            created = payload.get("created")
            if not isinstance(created, (int, float)):
                raise GatewayUnavailable(f"charge {key}: approved answer without a 'created' time")
            return ChargeApproved(charge_id=str(payload["id"]), amount_minor=int(payload.get("amount", 0)),
                                  currency=str(payload.get("currency", "")).upper(),
                                  created=datetime.fromtimestamp(created, tz=timezone.utc), replayed=replayed)
        if state == "failed":
            return ChargeDeclined(code=str(payload.get("failure_code") or "card_declined"),
                                  message=str(payload.get("failure_message") or "The charge failed."),
                                  replayed=replayed)
        # "pending" and anything unknown: not final; resending the key later gets the final state
        raise GatewayUnavailable(f"charge {key}: the gateway reports status {state!r}, not a final outcome")
