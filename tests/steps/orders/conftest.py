"""A provider, a customer and helpers to place orders, work the group-action queue and read results.

The order tables (0028) are emptied here: tests/conftest.py truncates only the older tables.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from panelflow.step import Interval

TZ = "Europe/London"
ORDER_TABLES = ("ppu_charges", "ppu_rated_days", "ppu_rates", "service_order_items", "service_orders", "resource_usage_samples",
                "subscription_quotas", "voice_bundle_usage", "voice_bundles")


def run_at(when: datetime, tz: str = TZ, minutes: int = 10) -> Interval:
    """ProvisioningWork's 10-minute interval ending at ``when``."""
    return Interval(when - timedelta(minutes=minutes), when, tz)


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=timezone.utc)


class World:
    def __init__(self, sql):
        self.sql = sql
        sql("INSERT INTO currencies (code, name) VALUES ('GBP', 'Pound sterling'), ('EUR', 'Euro')")
        self.provider = self.one("INSERT INTO providers (name, billing_email, currency)"
                                 " VALUES ('Host Ltd', 'billing@host.example', 'GBP') RETURNING id")
        sql("INSERT INTO tax_rates (provider_id, country, name, rate) VALUES (%s, 'GB', 'VAT', 0.20)", (self.provider,))
        self.customer = self.new_customer("acme")

    def one(self, query, params=None):
        return self.sql(query, params)[0][0]

    def new_customer(self, name, currency="GBP", status="active"):
        return self.one("INSERT INTO customers (provider_id, name, email, country, currency, status)"
                        " VALUES (%s, %s, %s, 'GB', %s, %s) RETURNING id",
                        (self.provider, name, f"{name}@example.com", currency, status))

    def subscription(self, customer=None, plan="exchange-basic", price="10.00", cycle="monthly", status="pending",
                     started_on=None, next_bill_date=None, currency="GBP"):
        return self.one("INSERT INTO subscriptions (customer_id, plan, price, currency, billing_cycle, status,"
                        " started_on, next_bill_date) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
                        (customer or self.customer, plan, price, currency, cycle, status, started_on, next_bill_date))

    def order(self, items, customer=None, placed_at=utc(2026, 12, 7, 9, 0)):
        """``items``: dicts of backend, action, payload, depends_on?, subscription_id?, priority?;
        positions 1, 2 … in the list's order. Written in one transaction, as the panel does."""
        order_id = self.one("INSERT INTO service_orders (customer_id, placed_at) VALUES (%s, %s) RETURNING id",
                            (customer or self.customer, placed_at))
        for position, item in enumerate(items, 1):
            self.sql("INSERT INTO service_order_items (order_id, position, depends_on, backend, action, payload,"
                     " subscription_id, priority) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                     (order_id, position, item.get("depends_on", []), item["backend"], item["action"],
                      json.dumps(item.get("payload", {})), item.get("subscription_id"), item.get("priority", 5)))
        return order_id

    def items(self, order_id):
        return self.sql("SELECT position, state, job_id, error FROM service_order_items WHERE order_id = %s"
                        " ORDER BY position", (order_id,))

    def status(self, order_id):
        return self.sql("SELECT status, error FROM service_orders WHERE id = %s", (order_id,))[0]

    def jobs(self):
        return self.sql("SELECT id, backend, action, payload, status FROM group_action_jobs ORDER BY id")

    def logs(self, order_id):
        return self.sql("SELECT level, event, message FROM service_queue_logs WHERE order_id = %s ORDER BY id",
                        (order_id,))


@pytest.fixture
def world(panel_db, sql):
    sql("TRUNCATE " + ", ".join(ORDER_TABLES) + " RESTART IDENTITY CASCADE")
    return World(sql)
