"""PaymentGatewayHook (Stripe's official library) against the Stripe sandbox, over real HTTP on 127.0.0.1.

What BillingWork's "charge once" rests on is pinned here: each Stripe answer becomes the outcome the
caller acts on (approved, declined with its decline code, unknown → resend the same key, refused),
the library never resends on its own, and the sandbox answers the wire requests the way Stripe
documents (form-encoded parameters, idempotent replay, 409 for a key in flight, 400 for a key
reused with other parameters). Nothing of the HTTP layer is mocked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import httpx
import pytest

from harness import ROOT
from panelflow.hooks.payment_gateway import (
    CardRefused,
    ChargeApproved,
    ChargeDeclined,
    GatewayAuthenticationError,
    GatewayRequestRejected,
    GatewayUnavailable,
    IdempotencyKeyConflict,
    PaymentGatewayHook,
)


def charge(hook, card, customer, key, amount=500, **more):
    return hook.charge(payment_method=card, customer=customer, amount_minor=amount, currency="GBP",
                       idempotency_key=key, description=more.pop("description", "Invoice X"),
                       metadata=more.pop("metadata", {"invoice_number": "X"}))


def test_approved_and_replayed_under_the_same_key(payment_gateway):
    customer, card = payment_gateway.saved_card("pm_card_visa", name="Ada")
    with PaymentGatewayHook() as hook:
        first = charge(hook, card, customer, "key-1")
        again = charge(hook, card, customer, "key-1")
        with pytest.raises(IdempotencyKeyConflict, match="can only be used with the same parameters") as conflict:
            charge(hook, card, customer, "key-1", amount=501)
    assert isinstance(first, ChargeApproved) and not first.replayed
    assert first.payment_intent_id.startswith("pi_") and first.charge_id.startswith("ch_")
    assert (first.amount_minor, first.currency) == (500, "GBP")
    assert again == ChargeApproved(first.payment_intent_id, first.charge_id, 500, "GBP", first.created, replayed=True)
    assert conflict.value.http_status == 400
    (made,) = payment_gateway.charges
    assert (made["id"], made["amount"], made["currency"], made["customer"], made["payment_method"]) == (
        first.payment_intent_id, 500, "gbp", customer, card)
    assert [(r["status"], r["replayed"]) for r in payment_gateway.requests] == [(200, False), (200, True), (400, False)]


@pytest.mark.parametrize(("card", "code"), [
    ("pm_card_visa_chargeDeclinedInsufficientFunds", "insufficient_funds"),
    ("pm_card_chargeDeclinedInsufficientFunds", "insufficient_funds"),   # the older spelling, same card
    ("pm_card_visa_chargeDeclinedStolenCard", "stolen_card"),
    ("pm_card_chargeDeclinedExpiredCard", "expired_card"),                # no decline_code: the error code
    ("pm_card_authenticationRequired", "authentication_required"),        # off-session: nobody to authenticate
])
def test_declines_carry_the_most_specific_code_and_are_replayed(payment_gateway, card, code):
    customer = payment_gateway.create_customer({"name": "Bob"})["id"]
    with PaymentGatewayHook() as hook:
        declined = charge(hook, card, customer, "key-2")
        again = charge(hook, card, customer, "key-2")
    assert isinstance(declined, ChargeDeclined) and declined.code == code and not declined.replayed
    assert declined.message.startswith("Your card ")
    assert again == ChargeDeclined(code, declined.message, replayed=True)
    assert payment_gateway.charges == []
    assert [r["status"] for r in payment_gateway.requests] == [402, 402]


def test_a_saved_card_whose_charges_fail(payment_gateway):
    """Stripe's declining test cards cannot be saved; pm_card_chargeCustomerFail can, and then declines."""
    with pytest.raises(Exception, match="insufficient funds"):
        payment_gateway.saved_card("pm_card_visa_chargeDeclinedInsufficientFunds")
    customer, card = payment_gateway.saved_card("pm_card_chargeCustomerFail")
    with PaymentGatewayHook() as hook:
        assert charge(hook, card, customer, "key-3") == ChargeDeclined("generic_decline", "Your card was declined.")


def test_unknown_outcomes_are_unavailable_and_sent_once(payment_gateway):
    """503, an answer lost after the charge, 429: the hook sends each request once (the library
    would resend on its own with retries on); only the caller resends, under the same key."""
    customer = payment_gateway.create_customer({})["id"]
    with PaymentGatewayHook() as hook:
        with pytest.raises(GatewayUnavailable, match=r"^charge k-down: HTTP 503 "):
            charge(hook, "pm_sandbox_unavailable", customer, "k-down")
        with pytest.raises(GatewayUnavailable, match=r"^charge k-slow: no answer \(ReadTimeout\)$") as lost:
            charge(hook, "pm_sandbox_answer_lost", customer, "k-slow")
        assert type(lost.value.__cause__.__cause__).__name__ == "ReadTimeout"   # the transport's own error
        payment_gateway.throttle(1)
        with pytest.raises(GatewayUnavailable, match=r"^charge k-busy: HTTP 429 rate_limit "):
            charge(hook, "pm_card_visa", customer, "k-busy")
        resent = charge(hook, "pm_sandbox_answer_lost", customer, "k-slow")   # the caller's resend
        assert isinstance(resent, ChargeApproved) and resent.replayed
    sent = [(r["idempotency_key"], r["status"], r["replayed"]) for r in payment_gateway.requests]
    assert sent == [("k-down", 503, False), ("k-slow", 200, False), ("k-busy", 429, False), ("k-slow", 200, True)]
    assert [c["idempotency_key"] for c in payment_gateway.charges] == ["k-slow"]   # charged once, answer lost once
    assert hook.settings.timeout == 1.0


def test_a_key_in_flight_is_409_and_the_first_request_charges_once(payment_gateway):
    customer, card = payment_gateway.saved_card("pm_sandbox_hold")
    first: list = []
    sender = threading.Thread(target=lambda: first.append(_charge_with_new_hook(card, customer, "k-held")))
    sender.start()
    try:
        assert payment_gateway.wait_held(1, timeout=10)
        with PaymentGatewayHook() as hook:
            with pytest.raises(GatewayUnavailable, match=r"^charge k-held: HTTP 409 idempotency_key_in_use "
                                                         r"There is currently another in-progress request"):
                charge(hook, card, customer, "k-held")
    finally:
        payment_gateway.release()
        sender.join(10)
    assert isinstance(first[0], ChargeApproved) and not first[0].replayed
    assert len(payment_gateway.charges) == 1
    assert [r["status"] for r in payment_gateway.requests] == [409, 200]   # logged as each finished


def _charge_with_new_hook(card, customer, key):
    with PaymentGatewayHook() as hook:
        return charge(hook, card, customer, key)


def test_refusals_are_rejected_with_stripes_code(payment_gateway):
    customer = payment_gateway.create_customer({})["id"]
    with PaymentGatewayHook() as hook:
        with pytest.raises(GatewayRequestRejected, match="No such PaymentMethod: 'pm_gone'") as missing:
            charge(hook, "pm_gone", customer, "k-missing")
        _, other_customers_card = payment_gateway.saved_card()
        with pytest.raises(GatewayRequestRejected, match="attached to another Customer"):
            charge(hook, other_customers_card, customer, "k-other")
    assert (missing.value.http_status, missing.value.code) == (400, "resource_missing")
    assert payment_gateway.charges == []


def test_wrong_key_is_an_authentication_error_without_the_key(payment_gateway, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_PAYMENT_GATEWAY", payment_gateway.connection(password="sk_test_wrong_key"))
    with PaymentGatewayHook() as hook:
        assert hook.test_connection() == (False, "Stripe refused the secret key (HTTP 401)")
        with pytest.raises(GatewayAuthenticationError, match=r"Invalid API Key provided: sk_test_\*+_key") as caught:
            charge(hook, "pm_card_visa", "cus_x", "k-auth")
    assert "sk_test_wrong_key" not in str(caught.value)
    assert payment_gateway.charges == []


def test_connection_settings_are_read_once(payment_gateway, monkeypatch):
    from airflow.sdk import BaseHook

    reads: list[str] = []
    real = BaseHook.get_connection.__func__
    monkeypatch.setattr(BaseHook, "get_connection", classmethod(lambda cls, cid: reads.append(cid) or real(cls, cid)))
    monkeypatch.setenv("AIRFLOW_CONN_PAYMENT_GATEWAY", payment_gateway.connection(
        extra={"timeout": "2", "stripe_version": "2026-10-28.endive"}))
    customer, card = payment_gateway.saved_card()
    with PaymentGatewayHook() as hook:
        assert hook.test_connection() == (True, "Stripe accepted the key")
        for n in range(3):
            assert isinstance(charge(hook, card, customer, f"once:{n}"), ChargeApproved)
        assert (hook.settings.api_base, hook.settings.timeout, hook.settings.stripe_version) == (
            payment_gateway.url, 2.0, "2026-10-28.endive")
    assert reads == ["payment_gateway"]


def test_vault_calls(payment_gateway):
    with PaymentGatewayHook() as hook:
        customer = hook.create_customer(name="Ada", email="ada@customer.test", metadata={"panel_customer_id": "7"},
                                        idempotency_key="vault-customer:7")
        assert hook.create_customer(name="Ada", email="ada@customer.test", metadata={"panel_customer_id": "7"},
                                    idempotency_key="vault-customer:7") == customer   # replayed, not made again
        assert hook.find_customer("panel_customer_id", "7") == customer
        assert hook.find_customer("panel_customer_id", "it's not") is None
        card = hook.payment_method_from_token("tok_mastercard_7", metadata={"panel_payment_profile_id": "1"},
                                              idempotency_key="vault-card:1")
        assert (card.customer_id, card.brand, card.last4) == (None, "mastercard", "4444")
        with pytest.raises(GatewayRequestRejected, match="more than once") as spent:
            hook.payment_method_from_token("tok_mastercard_7", metadata={}, idempotency_key="vault-card:other")
        attached = hook.attach(card.payment_method_id, customer, idempotency_key="vault-attach:1")
        assert attached.customer_id == customer and hook.payment_method(card.payment_method_id) == attached
        declining = hook.payment_method_from_token("tok_visa_chargeDeclinedStolenCard", metadata={},
                                                   idempotency_key="vault-card:2")
        with pytest.raises(CardRefused, match="card refused") as refused:
            hook.attach(declining.payment_method_id, customer, idempotency_key="vault-attach:2")
    assert spent.value.code == "token_already_used" and refused.value.code == "stolen_card"
    assert len(payment_gateway.customers) == 1


def test_the_sandbox_speaks_stripes_wire_format(payment_gateway):
    """Form-encoded bodies with nested keys, Basic auth with the key as user, JSON refused, and
    Stripe's headers on the answer."""
    customer, card = payment_gateway.saved_card()
    url = f"{payment_gateway.url}/v1/payment_intents"
    form = {"amount": "250", "currency": "gbp", "customer": customer, "payment_method": card, "confirm": "true",
            "off_session": "true", "metadata[invoice_number]": "W-1", "metadata[attempt]": "1"}
    basic = httpx.BasicAuth(payment_gateway.api_key, "")
    answer = httpx.post(url, data=form, auth=basic, headers={"Idempotency-Key": "wire-1"})
    assert answer.status_code == 200 and answer.headers["Request-Id"].startswith("req_")
    assert answer.json()["metadata"] == {"invoice_number": "W-1", "attempt": "1"}
    replay = httpx.post(url, data=form, auth=basic, headers={"Idempotency-Key": "wire-1"})
    assert replay.headers["Idempotent-Replayed"] == "true" and replay.json()["id"] == answer.json()["id"]
    assert replay.headers["Original-Request"] == answer.headers["Request-Id"]
    as_json = httpx.post(url, json=form, auth=basic)
    assert as_json.status_code == 400 and as_json.json()["error"]["type"] == "invalid_request_error"
    unauthorised = httpx.post(url, data=form)
    assert unauthorised.status_code == 401 and "did not provide an API key" in unauthorised.json()["error"]["message"]
    listed = httpx.get(f"{payment_gateway.url}/_sandbox/charges").json()["data"]
    assert [c["id"] for c in listed] == [answer.json()["id"]] == [c["id"] for c in payment_gateway.charges]


def test_gateway_runs_as_a_program_and_keeps_its_state(tmp_path):
    """``make run`` starts it as a process: it must listen, charge and stop on SIGTERM; with
    ``--state`` a restarted sandbox still knows what it was given, as Stripe does."""
    from panelflow.dev.postgres import free_port

    port = free_port()
    url = f"http://127.0.0.1:{port}/v1/payment_intents"
    headers = {"Authorization": "Bearer sk_test_cli", "Idempotency-Key": "cli-1"}
    form = {"amount": "250", "currency": "gbp", "payment_method": "pm_card_visa", "confirm": "true"}
    answers, errors = [], b""
    for _ in range(2):
        proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "include", "sandbox", "payment_gateway.py"),
                                 "--host", "127.0.0.1", "--port", str(port), "--api-key", "sk_test_cli",
                                 "--state", str(tmp_path / "stripe.json")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            _wait_listening(port, proc)
            answers.append(httpx.post(url, headers=headers, data=form))
        finally:
            proc.terminate()
            assert proc.wait(10) == 0
        errors += proc.stderr.read()
    first, after_restart = answers
    assert first.status_code == 200 and first.json()["status"] == "succeeded"
    assert after_restart.headers["Idempotent-Replayed"] == "true" and after_restart.json() == first.json()
    assert b"sk_test_cli" not in errors


def _wait_listening(port, proc) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            httpx.get(f"http://127.0.0.1:{port}/_sandbox/health", timeout=0.5)
            return
        except httpx.TransportError:
            assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read()
            time.sleep(0.05)


def test_the_connection_defaults_to_stripe(monkeypatch):
    """No host: Stripe's own API base (nothing is sent here)."""
    monkeypatch.setenv("AIRFLOW_CONN_STRIPE_LIVE", json.dumps({"conn_type": "panelflow_payment_gateway",
                                                               "password": "sk_test_not_sent"}))
    hook = PaymentGatewayHook("stripe_live")
    hook.get_conn()
    assert (hook.settings.api_base, hook.settings.timeout, hook.settings.stripe_version) == (
        "https://api.stripe.com", 30.0, None)
