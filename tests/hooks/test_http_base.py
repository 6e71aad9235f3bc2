"""The REST hooks' shared HTTP base (panelflow/hooks/_http.py), against the loopback sandboxes.

Pinned here because the REST hooks lean on it: the connection is read once per hook, ``Retry-After``
is what the hook waits (capped by ``max_retry_wait``), each hook keeps its own retry policy. (The
payment gateway speaks Stripe through Stripe's own library now: tests/hooks/test_payment_gateway.py.)
Real HTTP on 127.0.0.1; nothing of the HTTP layer is mocked.
"""

from __future__ import annotations

import json

import pytest

from sandbox import registrar as registrar_sandbox

KEY = "rk_test_http_base"


@pytest.fixture
def registrar(monkeypatch):
    from panelflow.dev.postgres import free_port

    domains = [registrar_sandbox.demo_domain(f"d{i}.example.test", i) for i in range(1, 4)]
    server = registrar_sandbox.RegistrarSandbox(port=free_port(), api_key=KEY, domains=domains).start()

    def connect(**extra):
        monkeypatch.setenv("AIRFLOW_CONN_REGISTRAR_HTTP_BASE", json.dumps({
            "conn_type": "panelflow_registrar", "host": "127.0.0.1", "port": server.port, "schema": "http",
            "password": KEY, "extra": {"timeout": 2, "retries": 3, "backoff": 0.01, "max_retry_wait": 5,
                                       "page_size": 2, **extra}}))
        return "registrar_http_base"

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


def test_settings_are_read_once_per_hook(registrar, connection_reads):
    from panelflow.hooks.registrar import RegistrarHook

    with RegistrarHook(registrar.connect()) as hook:
        assert len(hook.list_domains().domains) == 3          # two pages of two
        hook.get_domain("d1.example.test")
        settings = hook.settings
    assert connection_reads == ["registrar_http_base"]
    assert (settings.base_url, settings.timeout, settings.retries, settings.backoff, settings.max_retry_wait) == (
        f"http://127.0.0.1:{registrar.port}", 2.0, 3, 0.01, 5.0)


def test_defaults_when_the_connection_says_nothing(registrar, monkeypatch):
    from panelflow.hooks.registrar import RegistrarHook

    monkeypatch.setenv("AIRFLOW_CONN_REGISTRAR_BARE", json.dumps({
        "conn_type": "panelflow_registrar", "host": f"http://127.0.0.1:{registrar.port}", "password": KEY}))
    with RegistrarHook("registrar_bare") as hook:
        hook.get_conn()
        assert (hook.settings.timeout, hook.settings.retries, hook.settings.backoff,
                hook.settings.max_retry_wait) == (10.0, 4, 1.0, 60.0)


def test_a_malformed_extra_is_named(registrar):
    from panelflow.hooks.registrar import RegistrarHook

    ok, message = RegistrarHook(registrar.connect(retries="many")).test_connection()
    assert not ok
    assert message == "connection 'registrar_http_base': extra 'retries' must be a number, not 'many'"


def test_retry_after_is_waited_and_capped(registrar):
    from panelflow.hooks.registrar import RegistrarHook, RegistrarUnavailable

    sleeps: list[float] = []
    registrar.throttle(count=2, retry_after=2)
    with RegistrarHook(registrar.connect(), sleep=sleeps.append) as hook:
        assert hook.get_domain("d2.example.test").name == "d2.example.test"
    assert sleeps == [2.0, 2.0]                                  # what the registrar asked for, each time

    sleeps.clear()
    registrar.throttle(count=3, retry_after=30)
    with RegistrarHook(registrar.connect(max_retry_wait=0.5), sleep=sleeps.append) as hook:
        with pytest.raises(RegistrarUnavailable, match=r"HTTP 429 .*\(gave up after 3 attempts\)"):
            hook.get_domain("d2.example.test")
    assert sleeps == [0.5, 0.5]                                  # capped; no wait after the last attempt

