"""IngramCancelNoticesWork against the Ingram Reseller API sandbox and the real panel DB.

Proves: a requested cancellation is submitted only inside its notice window, once, with the
correlation id stored before the request; reruns send nothing twice; a lost answer is reconciled
by reading the order back, never by a blind second cancel; refused and missed cancellations end
so; every cancellation gets exactly one e-mail.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from panelflow.step import EndpointsFailed, Interval
from panelflow.steps.ingram import send_ingram_cancel_notices
from sandbox.ingram import IngramSandbox

RUN = datetime(2026, 12, 7, 9, 0, tzinfo=timezone.utc)   # the daily 09:00 run: its day is 2026-12-07


def _interval(at=RUN):
    return Interval(at - timedelta(days=1), at)


@pytest.fixture
def ingram(monkeypatch):
    with IngramSandbox() as sandbox:
        def connect(**changes):
            conn = {"conn_type": "panelflow_ingram", "host": sandbox.url, "login": sandbox.client_id,
                    "password": sandbox.client_secret,
                    "extra": {"customer_number": sandbox.customer_number, "country_code": "US",
                              "sender_id": "panelflow-tests", "backoff": 0, "retries": 3, "timeout": 2}}
            monkeypatch.setenv("AIRFLOW_CONN_INGRAM", json.dumps({**conn, **changes}))

        connect()
        sandbox.connect = connect
        yield sandbox


@pytest.fixture
def world(panel_db, sql):
    sql("TRUNCATE ingram_cancellations, ingram_subscriptions RESTART IDENTITY")
    sql("INSERT INTO currencies (code, name) VALUES ('GBP', 'Pound sterling') ON CONFLICT DO NOTHING")
    (provider,) = sql("INSERT INTO providers (name, billing_email, currency) VALUES ('Hosting Co',"
                      " 'billing@hosting.example', 'GBP') RETURNING id")[0]
    (customer,) = sql("INSERT INTO customers (provider_id, name, email, country, currency) VALUES (%s, 'Contoso Ltd',"
                      " 'it@contoso.example', 'GB', 'GBP') RETURNING id", (provider,))[0]

    def subscription(order: str, renewal: str, window: int = 30) -> int:
        (sub,) = sql("INSERT INTO subscriptions (customer_id, plan, price, currency, billing_cycle, next_bill_date,"
                     " started_on) VALUES (%s, 'Acronis Backup', 10, 'GBP', 'monthly', '2027-01-01', '2026-01-01')"
                     " RETURNING id", (customer,))[0]
        return sql("INSERT INTO ingram_subscriptions (subscription_id, customer_id, ingram_subscription_id,"
                   " ingram_order_number, product, renewal_date, notice_window_days) VALUES (%s, %s, %s, %s,"
                   " 'Acronis Cyber Protect', %s, %s) RETURNING id", (sub, customer, f"SUB-{order}", order, renewal,
                                                                     window))[0][0]

    def cancel(ingram_sub: int, term_end: str, notify: str | None = None) -> int:
        return sql("INSERT INTO ingram_cancellations (ingram_subscription_id, term_end, requested_at, requested_by,"
                   " notify_email) VALUES (%s, %s, '2026-11-20T10:00:00Z', 'operator:alice', %s) RETURNING id",
                   (ingram_sub, term_end, notify))[0][0]

    yield type("World", (), {"subscription": staticmethod(subscription), "cancel": staticmethod(cancel)})
    sql("TRUNCATE ingram_cancellations, ingram_subscriptions RESTART IDENTITY")


def _rows(sql):
    return sql("SELECT id, status, correlation_id, attempts, ingram_status, last_error FROM ingram_cancellations"
               " ORDER BY id")


def _mails(sql):
    return sql("SELECT dedupe_key, to_address, subject FROM email_outbox WHERE template = 'ingram_cancellation_notice'"
               " ORDER BY id")


def test_cancellation_in_its_window_is_submitted_once_with_one_email(panel_db, sql, ingram, world):
    ingram.add_order("20-RD128")
    ingram.add_order("20-RD129")
    due = world.cancel(world.subscription("20-RD128", "2026-12-31"), "2026-12-31", notify="alice@hosting.example")
    early = world.cancel(world.subscription("20-RD129", "2027-03-01"), "2027-03-01")   # window opens 2027-01-30

    result = send_ingram_cancel_notices(panel_db, _interval())
    assert result["cancelled"] == 1 and result["notices_queued"] == 1 and result["cancellations"] == 1
    (row, other) = _rows(sql)
    assert row[:2] == (due, "cancelled") and row[3] == 1 and row[4] == "CANCELLED"
    assert other[:3] == (early, "requested", None)
    deletes = ingram.calls("DELETE")
    assert [(d["path"], d["status"], d["correlation_id"]) for d in deletes] == [
        ("/resellers/v6/orders/20-RD128", 200, row[2])]                     # the stored id is the one sent
    assert ingram.status("20-RD128") == "CANCELLED" and ingram.status("20-RD129") == "CUSTOMER HOLD"
    assert sql("SELECT status FROM ingram_subscriptions ORDER BY id") == [("cancelled",), ("active",)]
    assert _mails(sql) == [(f"ingram-cancellation:{due}", "alice@hosting.example",
                            "Cancellation submitted: Acronis Cyber Protect")]

    for at in (RUN, RUN + timedelta(days=1)):                               # a rerun, and the next day's run
        again = send_ingram_cancel_notices(panel_db, _interval(at))
        assert again["cancelled"] == 0 and again["cancellations"] == 0
    assert len(ingram.calls("DELETE")) == 1 and len(_mails(sql)) == 1


def test_a_lost_answer_is_reconciled_without_a_second_cancel(panel_db, sql, ingram, world):
    ingram.add_order("20-RD200")
    ingram.lose_answer("20-RD200")
    cid = world.cancel(world.subscription("20-RD200", "2026-12-20"), "2026-12-20")

    with pytest.raises(EndpointsFailed, match="IngramOutcomeUnknown"):
        send_ingram_cancel_notices(panel_db, _interval())
    (row,) = _rows(sql)
    assert row[1] == "submitting" and row[2] and "IngramOutcomeUnknown" in row[5]
    assert ingram.status("20-RD200") == "CANCELLED" and _mails(sql) == []   # Ingram did it; nobody told yet

    retry = send_ingram_cancel_notices(panel_db, _interval())               # Airflow's retry of the task
    assert retry["reconciled"] == 1 and retry["cancelled"] == 1
    assert [d["correlation_id"] for d in ingram.calls("DELETE")] == [row[2]]   # one cancel, ever
    assert [g["correlation_id"] for g in ingram.calls("GET")] == [row[2]]
    assert _rows(sql)[0][1] == "cancelled" and [m[0] for m in _mails(sql)] == [f"ingram-cancellation:{cid}"]


def test_not_yet_cancelled_after_a_lost_answer_is_resent_under_the_same_correlation_id(panel_db, sql, ingram, world):
    world.cancel(world.subscription("20-RD300", "2026-12-20"), "2026-12-20")
    ingram.connect(host="http://127.0.0.1:9")       # claimed, then Ingram unreachable: the outcome is unknown
    with pytest.raises(EndpointsFailed):
        send_ingram_cancel_notices(panel_db, _interval())
    ingram.connect()
    ingram.add_order("20-RD300")
    (row,) = _rows(sql)
    assert row[1] == "submitting"
    result = send_ingram_cancel_notices(panel_db, _interval())
    assert result["cancelled"] == 1 and result["reconciled"] == 0
    assert [d["correlation_id"] for d in ingram.calls("DELETE")] == [row[2]]
    assert _rows(sql)[0][3] == 2                                            # two attempts, one correlation id


def test_refused_and_missed_cancellations_end_so_with_one_email_each(panel_db, sql, ingram, world):
    ingram.add_order("20-RD400", status="SHIPPED")
    refused = world.cancel(world.subscription("20-RD400", "2026-12-15"), "2026-12-15")
    missed = world.cancel(world.subscription("20-RD401", "2026-12-07"), "2026-12-07")   # the term ends today

    result = send_ingram_cancel_notices(panel_db, _interval())
    assert result["refused"] == 1 and result["missed"] == 1 and result["notices_queued"] == 2
    rows = {r[0]: r for r in _rows(sql)}
    assert rows[refused][1] == "refused" and "released to the warehouse" in rows[refused][5]
    assert rows[missed][1:3] == ("missed", None)
    assert [c["path"] for c in ingram.calls("DELETE")] == ["/resellers/v6/orders/20-RD400"]   # none for the missed one
    subjects = sorted(m[2] for m in _mails(sql))
    assert subjects == ["Cancellation not submitted in time: Acronis Cyber Protect",
                        "Cancellation refused by Ingram Micro: Acronis Cyber Protect"]
    assert send_ingram_cancel_notices(panel_db, _interval())["cancellations"] == 0 and len(_mails(sql)) == 2


def test_throttling_is_retried_and_tokens_are_reused(panel_db, sql, ingram, world):
    for n in (500, 501):
        ingram.add_order(f"20-RD{n}")
        world.cancel(world.subscription(f"20-RD{n}", "2026-12-20"), "2026-12-20")
    ingram.throttle(1)
    result = send_ingram_cancel_notices(panel_db, _interval())
    assert result["cancelled"] == 2
    statuses = [d["status"] for d in ingram.calls("DELETE")]
    assert statuses == [429, 200, 200]
    assert len([r for r in ingram.requests if r["path"] == "/oauth/oauth20/token"]) == 1   # one token for the run


def test_refused_credentials_fail_the_task_and_nothing_is_claimed_twice(panel_db, sql, ingram, world):
    ingram.add_order("20-RD600")
    world.cancel(world.subscription("20-RD600", "2026-12-20"), "2026-12-20")
    ingram.connect(password="wrong-secret")
    from panelflow.hooks.ingram import IngramAuthenticationError

    with pytest.raises(IngramAuthenticationError, match="invalid|Invalid"):
        send_ingram_cancel_notices(panel_db, _interval())
    assert ingram.calls("DELETE") == [] and ingram.status("20-RD600") == "CUSTOMER HOLD"
    ingram.connect()
    assert send_ingram_cancel_notices(panel_db, _interval())["cancelled"] == 1
    assert len(ingram.calls("DELETE")) == 1


def test_no_cancellations_needs_no_connection(panel_db, sql, world, monkeypatch):
    monkeypatch.delenv("AIRFLOW_CONN_INGRAM", raising=False)
    result = send_ingram_cancel_notices(panel_db, _interval())
    assert result["cancellations"] == 0 and result["cancelled"] == 0


def test_the_hook_renews_a_revoked_token_once_and_sends_the_im_headers(ingram):
    from panelflow.hooks.ingram import IngramHook

    ingram.add_order("20-RD700")
    with IngramHook() as hook:
        assert hook.order_status("20-RD700", correlation_id="corr-1").status == "CUSTOMER HOLD"
        ingram.revoke_tokens()                                              # Ingram expired it early
        hook.cancel_order("20-RD700", correlation_id="corr-2")
        assert hook.tokens_acquired == 2
    assert [(r["method"], r["status"], r["correlation_id"]) for r in ingram.requests if r["method"] != "POST"] == [
        ("GET", 200, "corr-1"), ("DELETE", 401, "corr-2"), ("DELETE", 200, "corr-2")]
    assert ingram.status("20-RD700") == "CANCELLED"
