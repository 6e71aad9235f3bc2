"""The voice steps' fixtures: the panel's voice tables emptied per test, a small billing world, and a
real SIP platform (Kamailio on 127.0.0.1 with its own database, SIPp for calls) per test module.

The panel DB fixture truncates the billing tables, which cascades to every voice table that
references them; ``sip_platforms`` references none, so it is emptied here (cascading to the rest).
The platform is shared by a module's tests: each test works in SIP domains of its own and empties
the call records, so what one test did never shows in another's figures.
"""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta, timezone

import psycopg
import pytest
from psycopg.types.json import Jsonb

from panelflow.step import Interval

CONN_ID = "sip_platform_voice_test"
_names = itertools.count(1)


def one(sql, query, params=None):
    return sql(query, params)[0][0]


@pytest.fixture
def voice_db(panel_db, sql):
    """The panel DB with no SIP platform, company, contract or bundle left by another test."""
    sql("TRUNCATE sip_platforms, voice_bundles RESTART IDENTITY CASCADE")
    return panel_db


@pytest.fixture
def world(voice_db, sql):
    """A provider taxing GB at 20 %, two GB customers (acme, globex) with a voice subscription each,
    and SIP rates: 44 → 0.02/min, 447 → 0.10/min + 0.05, the catch-all (on-net) free."""
    sql("INSERT INTO currencies (code, name) VALUES ('GBP', 'Pound sterling')")
    provider = one(sql, "INSERT INTO providers (name, billing_email, currency)"
                        " VALUES ('Host Ltd', 'billing@host.example', 'GBP') RETURNING id")
    sql("INSERT INTO tax_rates (provider_id, country, name, rate) VALUES (%s, 'GB', 'VAT', 0.20)", (provider,))
    customers, subscriptions = {}, {}
    for name in ("acme", "globex"):
        customers[name] = one(sql, "INSERT INTO customers (provider_id, name, email, country, currency)"
                                   " VALUES (%s, %s, %s, 'GB', 'GBP') RETURNING id",
                              (provider, name, f"billing@{name}.example"))
        subscriptions[name] = one(sql, "INSERT INTO subscriptions (customer_id, plan, price, currency, billing_cycle,"
                                       " next_bill_date, started_on) VALUES (%s, 'voice', 10, 'GBP', 'monthly',"
                                       " '2027-01-01', '2026-01-01') RETURNING id", (customers[name],))
    sql("INSERT INTO voice_rates (rate_table, prefix, description, currency, per_minute, connection_fee) VALUES"
        " ('sip', '44', 'UK', 'GBP', 0.02, 0), ('sip', '447', 'UK mobile', 'GBP', 0.10, 0.05),"
        " ('sip', '', 'On net', 'GBP', 0, 0)")
    return {"customer": customers, "subscription": subscriptions}


class VoicePanel:
    """Rows of the panel's voice tables, as the panel (or a test) writes them."""

    AT = datetime(2026, 12, 1, tzinfo=timezone.utc)

    def __init__(self, sql):
        self.sql = sql

    def one(self, query, params=None):
        return one(self.sql, query, params)

    def platform(self, name: str = "sip1", conn_id: str = CONN_ID, enabled: bool = True) -> int:
        return self.one("INSERT INTO sip_platforms (name, conn_id, enabled) VALUES (%s, %s, %s) RETURNING id",
                        (name, conn_id, enabled))

    def company(self, platform_id: int, customer_id: int, subscription_id: int | None, domain: str,
                channel_limit: int | None = None, status: str = "active", at: datetime | None = None) -> int:
        return self.one("INSERT INTO voice_companies (platform_id, customer_id, subscription_id, sip_domain,"
                        " channel_limit, status, created_at, deleted_at) VALUES (%s, %s, %s, %s, %s, %s, %s,"
                        " CASE WHEN %s = 'deleted' THEN %s::timestamptz END) RETURNING id",
                        (platform_id, customer_id, subscription_id, domain, channel_limit, status, at or self.AT,
                         status, at or self.AT))

    def subscriber(self, company_id: int, username: str, status: str = "active", ref: str | None = None,
                   at: datetime | None = None) -> int:
        return self.one("INSERT INTO voice_subscribers (company_id, username, external_ref, status, created_at,"
                        " deleted_at) VALUES (%s, %s, %s, %s, %s, CASE WHEN %s = 'deleted' THEN %s::timestamptz END)"
                        " RETURNING id", (company_id, username, ref, status, at or self.AT, status, at or self.AT))

    def bundle(self, subscription_id: int, minutes: int, status: str = "active") -> int:
        return self.one("INSERT INTO voice_bundles (subscription_id, name, minutes_per_month, status)"
                        " VALUES (%s, 'Bundle', %s, %s) RETURNING id", (subscription_id, minutes, status))

    def queue(self, action: str, **payload) -> int:
        return self.one("INSERT INTO group_action_jobs (backend, action, payload) VALUES ('sip', %s, %s)"
                        " RETURNING id", (action, Jsonb(payload)))

    def job(self, job_id: int) -> dict:
        status, payload, result, error, attempts = self.sql(
            "SELECT status, payload, result, error, attempts FROM group_action_jobs WHERE id = %s", (job_id,))[0]
        return {"status": status, "payload": payload, "result": result, "error": error, "attempts": attempts}


@pytest.fixture
def panel(voice_db, sql) -> VoicePanel:
    return VoicePanel(sql)


def unique_domain(prefix: str) -> str:
    return f"{prefix}{next(_names)}.voice.test"


@pytest.fixture
def new_domain():
    """``new_domain("acme")`` → a SIP domain no other test of the session uses."""
    return unique_domain


@pytest.fixture
def now_interval():
    """An interval around the wall clock, for what SIPp does now."""
    now = datetime.now(timezone.utc)
    return Interval(now - timedelta(minutes=10), now + timedelta(minutes=10), "UTC")


@pytest.fixture(scope="module")
def kamailio(postgres, tmp_path_factory):
    """A real Kamailio for the module, reachable as the Airflow connection ``CONN_ID``."""
    from harness.kamailio import Kamailio

    with Kamailio(postgres, tmp_path_factory.mktemp("kamailio")) as kam, pytest.MonkeyPatch.context() as mp:
        mp.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", kam.connection_uri())
        yield kam


@pytest.fixture
def platform(kamailio, voice_db, sql):
    """The module's Kamailio as the panel's platform ``sip1`` (its call records emptied): ``.id``,
    ``.kam`` (the harness), ``.hook()``, ``.rows(query)`` on the platform's own database."""
    with psycopg.connect(kamailio.db_uri, autocommit=True) as conn:
        conn.execute("DELETE FROM acc_cdrs")

    class Platform:
        id = VoicePanel(sql).platform()
        kam = kamailio

        @staticmethod
        def hook():
            """The platform as another admin tool would change it: through the hook, outside the panel."""
            from panelflow.hooks.sip_platform import SipPlatformHook

            return SipPlatformHook(CONN_ID)

        @staticmethod
        def rows(query, params=None):
            with psycopg.connect(kamailio.db_uri, autocommit=True) as conn:
                cur = conn.execute(query, params)
                return cur.fetchall() if cur.description else cur.rowcount

    return Platform
