"""The REST hooks' shared HTTP base (panelflow/hooks/_http.py), on the DigiCert hook and its loopback sandbox.

Partner Center, Azure Retail Prices, DigiCert, Sectigo, Dynamics, Ingram, BlackBerry and the licence
vendor all lean on ``HttpApiHook``, so what it does for all of them is pinned here, once, on one of
them: the connection is read once per hook, the hook's defaults apply when the connection says
nothing, a malformed extra is named before any request, ``Retry-After`` is waited but never longer
than ``max_retry_wait``, and a server that never answers ends in the hook's own "unavailable" error
after its attempts, with exponential backoff between them. (DigiCert's own answers, a plain
``Retry-After`` and a 429 through every attempt: tests/hooks/test_digicert.py.) Real HTTP on
127.0.0.1; nothing of the HTTP layer is mocked.
"""

from __future__ import annotations

import json

import pytest

from panelflow.hooks._http import Retryable, retry_after
from panelflow.hooks.digicert import DEFAULT_BASE_URL, DigiCertHook, DigiCertUnavailable
from sandbox.digicert import DigiCertSandbox
from sandbox.test_ca import csr_for

KEY = "dc_test_http_base_7c1e"
CONN = "digicert_http_base"


@pytest.fixture
def digicert(monkeypatch):
    """The sandbox, and ``connect(**extra)``: the connection ``digicert_http_base`` to it with these extras."""
    from panelflow.dev.postgres import free_port

    server = DigiCertSandbox(port=free_port(), api_key=KEY).start()

    def connect(host=f"{server.url}/services/v2", **extra):
        monkeypatch.setenv(f"AIRFLOW_CONN_{CONN.upper()}", json.dumps({
            "conn_type": "panelflow_digicert", "host": host, "password": KEY,
            "extra": {"timeout": 2, "retries": 3, "backoff": 0.01, "max_retry_wait": 5, **extra}}))
        return CONN

    server.connect = connect
    yield server
    server.stop()


@pytest.fixture
def connection_reads(monkeypatch):
    """How often each connection id was looked up (``BaseHook.get_connection``, the real one)."""
    from airflow.sdk import BaseHook

    reads: list[str] = []
    real = BaseHook.get_connection.__func__

    def counted(cls, conn_id):
        reads.append(conn_id)
        return real(cls, conn_id)

    monkeypatch.setattr(BaseHook, "get_connection", classmethod(counted))
    return reads


def test_the_connection_is_read_once_per_hook(digicert, connection_reads):
    _, csr = csr_for("a.example.test")
    order_id = str(digicert.add_order(csr, "a.example.test"))
    with DigiCertHook(digicert.connect(timeout="7.5", retries=4, backoff=0.25, max_retry_wait=9)) as hook:
        hook.get_order(order_id)
        digicert.issue(int(order_id))
        hook.download(hook.get_order(order_id).certificate_id)
        settings = hook.settings
    assert connection_reads == [CONN]                      # three requests, one read
    assert [r["status"] for r in digicert.requests] == [200, 200, 200]
    # the extras as typed into the form ("7.5" is a number too)
    assert (settings.base_url, settings.timeout, settings.retries, settings.backoff, settings.max_retry_wait) == (
        f"{digicert.url}/services/v2", 7.5, 4, 0.25, 9.0)

    with DigiCertHook(CONN) as another:                    # a new hook (the next task) reads it afresh
        another.get_order(order_id)
    assert connection_reads == [CONN, CONN]


def test_defaults_when_the_connection_says_nothing(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_DIGICERT_BARE", json.dumps({"conn_type": "panelflow_digicert",
                                                                 "password": KEY}))
    with DigiCertHook("digicert_bare") as hook:
        hook.get_conn()                                    # no request: the client is only configured
        s = hook.settings
    # the base's defaults, but the hook's own where it has one (DigiCert: 5 attempts, its public URL)
    assert (s.base_url, s.timeout, s.retries, s.backoff, s.max_retry_wait) == (DEFAULT_BASE_URL, 30.0, 5, 1.0, 120.0)


def test_a_malformed_extra_is_named_before_any_request(digicert):
    with DigiCertHook(digicert.connect(retries="many")) as hook:
        with pytest.raises(ValueError) as bad:
            hook.get_order("1001")
    assert str(bad.value) == f"connection '{CONN}': extra 'retries' must be a number, not 'many'"
    assert digicert.requests == []


def test_retry_after_is_waited_but_capped_by_max_retry_wait(digicert):
    _, csr = csr_for("b.example.test")
    order_id = str(digicert.add_order(csr, "b.example.test"))
    digicert.throttle(2, retry_after=30)
    sleeps: list[float] = []
    with DigiCertHook(digicert.connect(max_retry_wait=0.5), sleep=sleeps.append) as hook:
        assert hook.get_order(order_id).status == "pending"
    assert sleeps == [0.5, 0.5]                            # not the 30 s the server asked for
    assert [r["status"] for r in digicert.requests] == [429, 429, 200]


def test_retry_after_as_seconds_or_an_http_date():
    assert retry_after("12") == 12.0 and retry_after(" 1.5 ") == 1.5
    assert retry_after("-3") == 0.0                        # never a negative wait
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0   # a moment already past: at once
    assert retry_after(None) is None and retry_after("soon") is None   # unreadable: the backoff decides


def test_no_answer_through_every_attempt_is_the_hooks_unavailable_error(digicert):
    from panelflow.dev.postgres import free_port

    nobody = f"http://127.0.0.1:{free_port()}/services/v2"    # nothing listens there: connection refused
    sleeps: list[float] = []
    with DigiCertHook(digicert.connect(host=nobody, retries=4, backoff=1, max_retry_wait=3),
                      sleep=sleeps.append) as hook:
        with pytest.raises(DigiCertUnavailable,
                           match=r"^DigiCert 'digicert_http_base': GET /order/certificate/1001: ConnectError: .*"
                                 r"\(gave up after 4 attempts\)$") as down:
            hook.get_order("1001")
    assert isinstance(down.value.__cause__, Retryable)      # raised from the last attempt's failure
    # no Retry-After: exponential backoff (1, 2, 4 s) with up to a tenth of jitter, capped at 3 s;
    # three waits for four attempts, none after the last
    assert len(sleeps) == 3
    assert 1.0 <= sleeps[0] <= 1.1 and 2.0 <= sleeps[1] <= 2.2 and sleeps[2] == 3.0
