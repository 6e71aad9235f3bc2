"""Fixtures of the hosting steps: the panel's hosting rows and a real MariaDB (``mariadbd``) per module.

The panel_db fixture empties the tables of 0001/0006 only; the hosting tables (0024) and what the
hosting steps write are emptied here, by ``hosting``, before each test that uses it. Nothing here is
autouse: the other test modules of this folder keep fixtures of their own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import pytest

from harness.mariadb import MariaDB
from panelflow.step import Interval

CLOCK = datetime(2026, 3, 2, 10, 0, tzinfo=timezone.utc)
HOSTING_TABLES = ("hosting_servers", "hosted_sites", "hosted_databases", "hosted_database_users",
                  "hosted_ftp_accounts", "hosted_site_quotas", "hosted_site_disk_usage", "white_label_urls",
                  "resource_usage_samples", "group_action_jobs")


def interval(end: datetime = CLOCK, minutes: int = 10) -> Interval:
    return Interval(end - timedelta(minutes=minutes), end)


@pytest.fixture(scope="module")
def hosting_mariadb(tmp_path_factory):
    """One throw-away mariadbd on 127.0.0.1 for the test module (harness.mariadb)."""
    with MariaDB(tmp_path_factory.mktemp("mariadb")) as db:
        yield db


@dataclass
class Hosting:
    """The panel side of a hosting test: a customer with two subscriptions, and helpers adding servers,
    sites and jobs as the panel does."""

    sql: object
    db: object
    monkeypatch: object
    subscriptions: list[int] = field(default_factory=list)

    def server(self, name: str, role: str, engine: str, connection: str, content_root: str | None = None) -> int:
        """A hosting_servers row named ``name`` whose connection (id = name in lower case) is ``connection``."""
        conn_id = name.lower()
        self.monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", connection)
        return self.sql("INSERT INTO hosting_servers (name, role, engine, host, conn_id, content_root)"
                        " VALUES (%s, %s, %s, %s, %s, %s) RETURNING id",
                        (name, role, engine, f"{conn_id}.hosting.example", conn_id, content_root))[0][0]

    def site(self, name: str, web_server: int, subscription: int | None = None, status: str = "pending",
             physical_path: str | None = None, iis_site_id: int | None = None, file_server: int | None = None) -> int:
        return self.sql("INSERT INTO hosted_sites (subscription_id, web_server_id, file_server_id, name, status,"
                        " physical_path, iis_site_id) VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id",
                        (subscription or self.subscriptions[0], web_server, file_server, name, status, physical_path,
                         iis_site_id))[0][0]

    def job(self, backend: str, action: str, payload: dict, priority: int = 5) -> int:
        from panelflow.services.group_actions import queue_job

        with self.db.get_conn() as conn:
            conn.autocommit = True
            return queue_job(conn, backend, action, payload, priority)

    def jobs(self) -> dict[int, tuple]:
        """id → (action, status, result, error, payload) of every job."""
        return {r[0]: r[1:] for r in self.sql("SELECT id, action, status, result, error, payload"
                                              " FROM group_action_jobs ORDER BY id")}

    def rerun(self, *job_ids: int) -> None:
        """Put finished jobs back to pending, as an operator's "run again" does."""
        self.sql("UPDATE group_action_jobs SET status = 'pending', finished_at = NULL WHERE id = ANY(%s)",
                 (list(job_ids),))


@pytest.fixture
def hosting(panel_db, sql, monkeypatch) -> Hosting:
    sql("TRUNCATE " + ", ".join(HOSTING_TABLES) + " RESTART IDENTITY CASCADE")
    sql("INSERT INTO currencies (code, name) VALUES ('GBP', 'Pound sterling')")
    (provider,), = sql("INSERT INTO providers (name, billing_email, currency)"
                       " VALUES ('Host', 'billing@host.example', 'GBP') RETURNING id")
    (customer,), = sql("INSERT INTO customers (provider_id, name, email, country, currency)"
                       " VALUES (%s, 'Acme', 'it@acme.example', 'GB', 'GBP') RETURNING id", (provider,))
    subscriptions = [sql("INSERT INTO subscriptions (customer_id, plan, price, currency, billing_cycle, next_bill_date,"
                         " started_on) VALUES (%s, 'Web', 10, 'GBP', 'monthly', '2026-04-01', '2026-01-01')"
                         " RETURNING id", (customer,))[0][0] for _ in range(2)]
    return Hosting(sql, panel_db, monkeypatch, subscriptions)
