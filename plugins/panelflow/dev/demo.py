"""Demo data for the panel DB: ``python -m panelflow.dev.demo [URL] [--customers N]``.

A provider's worth of rows for the tables the built threads work on — panel sessions (some
expired, some logged out), session history, due notifications in the outbox, and logs and
records of every age the retention steps look at, and a billing provider (see
``BILLING_DEMO``) — so a fresh ``make run`` has something for every built thread to do. Deterministic (seeded) and set-based: N customers load in one statement per table.
"""

from __future__ import annotations

import argparse
from datetime import datetime, timezone

import psycopg

from panelflow.db import sqlalchemy_url

DEMO = [
    # sessions: ~1 per customer; a fifth already past expiry, a tenth logged out
    """INSERT INTO sessions (session_key, user_kind, user_id, started_at, last_seen_at, expires_at, ended_at, status)
       SELECT 'demo-' || g, (ARRAY['customer', 'customer', 'customer', 'reseller', 'employee'])[1 + g %% 5], g,
              %(now)s - make_interval(mins => 30 + g %% 240), %(now)s - make_interval(mins => g %% 30),
              %(now)s + make_interval(mins => (g %% 5) * 30 - 35),
              CASE WHEN g %% 10 = 3 THEN %(now)s - make_interval(mins => g %% 20) END,
              CASE WHEN g %% 10 = 3 THEN 'logged_out' ELSE 'active' END
       FROM generate_series(1, %(n)s) g
       ON CONFLICT (session_key) DO NOTHING""",
    """INSERT INTO session_history (session_key, user_kind, user_id, started_at, ended_at, end_reason)
       SELECT 'demo-old-' || g, 'customer', g, %(now)s - make_interval(days => g %% 200, hours => 2),
              %(now)s - make_interval(days => g %% 200), 'expired'
       FROM generate_series(1, %(n)s * 3) g
       ON CONFLICT (session_key) DO NOTHING""",
    """INSERT INTO service_queue_logs (order_id, level, message, logged_at)
       SELECT g / 4, (ARRAY['info', 'info', 'warning', 'error'])[1 + g %% 4], 'order step ' || g %% 4 || ' done',
              %(now)s - make_interval(days => g %% 150, mins => g %% 1440)
       FROM generate_series(1, %(n)s * 8) g""",
    """INSERT INTO voice_bill_records (company_id, subscriber, minutes, amount, currency, billed_at)
       SELECT 1 + g %% 17, '+4420' || lpad((g %% 10000)::text, 6, '0'), (g %% 300) / 10.0, (g %% 300) * 0.012, 'GBP',
              %(now)s - make_interval(days => g %% 160)
       FROM generate_series(1, %(n)s * 4) g""",
    """INSERT INTO temp_data (kind, payload, created_at)
       SELECT (ARRAY['cart', 'import', 'wizard'])[1 + g %% 3], jsonb_build_object('step', g %% 7),
              %(now)s - make_interval(days => g %% 240)
       FROM generate_series(1, %(n)s * 4) g""",
    """INSERT INTO azure_rates (meter_id, region, unit_price, currency, effective_date, fetched_at)
       SELECT 'meter-' || g, (ARRAY['uksouth', 'ukwest', 'westeurope'])[1 + g %% 3], (g %% 1000) / 997.0, 'USD',
              (%(now)s - make_interval(days => g %% 1000))::date, %(now)s - make_interval(days => g %% 1000)
       FROM generate_series(1, %(n)s) g""",
    """INSERT INTO o365_subscription_reconciliations (tenant_id, subscription_id, difference, reconciled_at)
       SELECT 'tenant-' || g %% 50, 'sub-' || g, jsonb_build_object('quantity', g %% 3 - 1),
              %(now)s - make_interval(days => g %% 540)
       FROM generate_series(1, %(n)s) g""",
    # a few due notifications for SendEmailNotificationsWork (they land in make run's SMTP sink)
    """INSERT INTO email_outbox (dedupe_key, template, to_address, subject, body_text, body_html, not_before, message_id)
       SELECT 'demo-notice-' || g, 'notification', 'customer' || g || '@demo.example',
              'Your service is ready (#' || g || ')', 'Hello,' || chr(10) || chr(10) || 'Your service #' || g || ' is ready.',
              NULL, %(now)s - make_interval(mins => g %% 30), '<demo-notice-' || g || '@panelflow>'
       FROM generate_series(1, 20) g
       ON CONFLICT (dedupe_key) DO NOTHING""",
    """INSERT INTO email_logs (recipient, subject, status, sent_at)
       SELECT 'customer' || g %% 1000 || '@demo.example', 'Your invoice #' || g, 'sent',
              %(now)s - make_interval(days => g %% 120)
       FROM generate_series(1, %(n)s * 4) g""",
]


# A provider for BillingWork: resellers (some on commission, one with its own tax rates),
# customers in four countries, ~5 subscriptions each across cycles (some deferred, some with
# add-ons, some on Microsoft 365 offers), stored card tokens, OCS and SIP traffic with rate
# tables, and a Microsoft price list with changes published the day before. A few records are
# bad on purpose — no price, an unknown currency, no payment profile, a declining card — so a
# run shows them reported and skipped. Ids are explicit (g), so the rows can refer to each other.
BILLING_DEMO = [
    """INSERT INTO currencies (code, name, minor_units) VALUES ('GBP', 'Pound sterling', 2), ('EUR', 'Euro', 2),
       ('USD', 'US dollar', 2) ON CONFLICT DO NOTHING""",
    """INSERT INTO providers (id, name, billing_email, currency) OVERRIDING SYSTEM VALUE
       VALUES (1, 'Demo Hosting Ltd', 'billing@demo-hosting.example', 'GBP')""",
    """INSERT INTO tax_rates (provider_id, country, name, rate)
       VALUES (1, 'GB', 'VAT', 0.20), (1, 'DE', 'MwSt', 0.19), (1, 'FR', 'TVA', 0.20), (1, 'IE', 'VAT', 0.23)""",
    """INSERT INTO resellers (id, provider_id, name, email, commission_based, commission_rate) OVERRIDING SYSTEM VALUE
       SELECT r, 1, 'Reseller ' || r, 'billing@reseller' || r || '.example', r %% 2 = 1, (10 + r %% 3 * 5) / 100.0
       FROM generate_series(1, %(resellers)s::int) r""",
    # reseller 2 charges its own UK rate; the others get the provider's copied by the billing run
    """INSERT INTO tax_rates (reseller_id, country, name, rate) VALUES (2, 'GB', 'VAT (reseller rate)', 0.175)""",
    """INSERT INTO customers (id, provider_id, reseller_id, name, email, country, currency) OVERRIDING SYSTEM VALUE
       SELECT g, 1, CASE WHEN g %% 3 = 0 THEN NULL ELSE 1 + g %% %(resellers)s::int END, 'Customer ' || g,
              CASE WHEN g %% 89 = 5 THEN NULL ELSE 'customer' || g || '@demo.example' END,
              (ARRAY['GB', 'GB', 'DE', 'FR', 'IE'])[1 + g %% 5],
              CASE WHEN g %% 5 < 2 THEN 'GBP' ELSE 'EUR' END
       FROM generate_series(1, %(n)s::int) g""",
    # legacy card references (sandbox tokens of Stripe's test cards, include/sandbox/README.md) that
    # ProvisioningWork 27 moves into Stripe's vault; brand and last four digits come from Stripe then
    """INSERT INTO payment_profiles (customer_id, legacy_card_token)
       SELECT g, CASE WHEN g %% 41 = 7 THEN 'tok_chargeCustomerFail_'
                      ELSE (ARRAY['tok_visa_', 'tok_mastercard_', 'tok_amex_'])[1 + g %% 3] END || g
       FROM generate_series(1, %(n)s::int) g WHERE g %% 53 <> 11""",
    """INSERT INTO subscriptions (id, customer_id, plan, price, currency, quantity, billing_cycle, next_bill_date,
                                 deferred_billing, o365_offer_id, started_on) OVERRIDING SYSTEM VALUE
       SELECT g, c, p.plan,
              CASE WHEN g %% 997 = 500 THEN NULL ELSE p.price * (CASE cyc WHEN 'monthly' THEN 1 WHEN 'quarterly' THEN 3 ELSE 12 END) END,
              CASE WHEN g %% 1009 = 600 THEN 'XXX' ELSE (CASE WHEN c %% 5 < 2 THEN 'GBP' ELSE 'EUR' END) END,
              p.qty, cyc, nbd, g %% 20 = 3, p.offer, (nbd - make_interval(months => m * (1 + g %% 4)))::date
       FROM (SELECT g, 1 + (g - 1) / %(per)s::int AS c,
                    (ARRAY['monthly', 'monthly', 'monthly', 'monthly', 'monthly', 'monthly', 'monthly',
                           'quarterly', 'quarterly', 'yearly'])[1 + g %% 10] AS cyc,
                    CASE WHEN %(due_day)s::date IS NOT NULL THEN %(due_day)s::date
                         ELSE (%(today)s::date - 2 + (g * 7 %% 31)) END AS nbd
             FROM generate_series(1, %(n)s::int * %(per)s::int) g) s
       CROSS JOIN LATERAL (SELECT CASE s.cyc WHEN 'monthly' THEN 1 WHEN 'quarterly' THEN 3 ELSE 12 END AS m) mm
       CROSS JOIN LATERAL (SELECT (ARRAY['Web Hosting Basic', 'Exchange Mailbox', 'Microsoft 365 Business Standard',
                                         'Lync Voice', 'SIP Trunk', 'Hyper-V VPS'])[1 + g %% 6] AS plan,
                                  (ARRAY[4.99, 3.50, 10.30, 6.00, 12.00, 19.99])[1 + g %% 6] AS price,
                                  CASE WHEN g %% 6 = 1 THEN 1 + g %% 25 WHEN g %% 6 = 2 THEN 1 + g %% 10 ELSE 1 END AS qty,
                                  CASE WHEN g %% 6 = 2 THEN 'CFQ7TTC0LDPB' END AS offer) p""",
    """INSERT INTO subscription_addons (subscription_id, name, price, quantity)
       SELECT g, (ARRAY['Extra 10 GB storage', 'Archiving', 'Dedicated IP'])[1 + g %% 3], 1.50 + g %% 3, 1 + g %% 2
       FROM generate_series(4, %(n)s::int * %(per)s::int, 4) g""",
    """INSERT INTO voice_rates (rate_table, prefix, description, currency, per_minute, connection_fee)
       SELECT t, prefix, d, cur, rate * CASE WHEN cur = 'EUR' THEN 1.17 ELSE 1 END, fee
       FROM (VALUES ('44', 'United Kingdom', 0.020, 0.05), ('447', 'United Kingdom mobile', 0.080, 0.05),
                    ('4420', 'London', 0.015, 0.05), ('49', 'Germany', 0.030, 0.05), ('33', 'France', 0.030, 0.05),
                    ('1', 'North America', 0.010, 0.00), ('', 'Rest of world', 0.250, 0.10)) r(prefix, d, rate, fee)
       CROSS JOIN (VALUES ('ocs'), ('sip')) t(t) CROSS JOIN (VALUES ('GBP'), ('EUR')) cur(cur)""",
    """INSERT INTO ocs_call_records (subscription_id, caller, destination, started_at, duration_seconds)
       SELECT s.id, 'sip:user' || (k %% 3) || '.' || s.customer_id || '@demo.example',
              (ARRAY['442079460000', '447700900123', '4930123456', '33142685300', '12125550100'])[1 + k %% 5],
              %(yesterday)s::timestamptz + make_interval(mins => ((s.id * 13 + k * 37) %% 1440)::int), 20 + (s.id * k) %% 900
       FROM subscriptions s CROSS JOIN generate_series(1, 6) k WHERE s.plan = 'Lync Voice'""",
    """INSERT INTO sip_usage (subscription_id, sip_account, destination, started_at, duration_seconds)
       SELECT s.id, 'trunk' || s.id, (ARRAY['442079460000', '4930123456', '12125550100', '8613800000000'])[1 + k %% 4],
              %(yesterday)s::timestamptz + make_interval(mins => ((s.id * 11 + k * 53) %% 1440)::int), 30 + (s.id * k) %% 1200
       FROM subscriptions s CROSS JOIN generate_series(1, 8) k WHERE s.plan = 'SIP Trunk'""",
    """INSERT INTO o365_price_lists (offer_id, offer_name, currency, unit_price, effective_from, published_on)
       VALUES ('CFQ7TTC0LDPB', 'Microsoft 365 Business Standard', 'GBP', 9.40, '2025-04-01', '2025-03-01'),
              ('CFQ7TTC0LDPB', 'Microsoft 365 Business Standard', 'EUR', 11.70, '2025-04-01', '2025-03-01'),
              ('CFQ7TTC0LDPB', 'Microsoft 365 Business Standard', 'GBP', 10.30, %(next_month)s, %(yesterday_date)s),
              ('CFQ7TTC0LDPB', 'Microsoft 365 Business Standard', 'EUR', 11.70, %(next_month)s, %(yesterday_date)s)""",
]
_IDENTITIES = ("providers", "resellers", "customers", "subscriptions")


_USAGE = ("INSERT INTO ocs_call_records", "INSERT INTO sip_usage")


def load_billing_demo(conn, customers: int, today, due_day=None, per_customer: int = 5, usage: bool = True) -> None:
    """The billing provider, once (skipped when a provider exists). ``due_day`` puts every
    subscription's next bill on that day (the benchmark); otherwise they spread over the month
    from the day before yesterday on, so each nightly run (and a "run now", which bills
    yesterday) has a thirty-first of them to bill."""
    from datetime import datetime as dt, time, timedelta
    from zoneinfo import ZoneInfo

    if conn.execute("SELECT 1 FROM providers LIMIT 1").fetchone():
        return
    yesterday = today - timedelta(days=1)
    params = {"n": customers, "per": per_customer, "resellers": max(2, customers // 100), "today": today,
              "due_day": due_day, "yesterday_date": yesterday,
              "yesterday": dt.combine(yesterday, time(), ZoneInfo("Europe/London")),
              "next_month": (today.replace(day=1) + timedelta(days=32)).replace(day=1)}
    with conn.transaction():
        for statement in BILLING_DEMO:
            if usage or not statement.lstrip().startswith(_USAGE):
                conn.execute(statement, params)
        for table in _IDENTITIES:  # explicit ids above: move the identities past them
            conn.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))")


def load_local_sandbox(conn, ports: dict[str, int], graph_tenants: list[str] | None = None) -> None:
    """What ``make run`` itself offers to the threads that probe or sync: monitors on its own
    components (the API server's health page, the SMTP sink, PostgreSQL, the sandboxes), the
    sandbox registrar as a registrar account, the Microsoft sandbox's tenants, the Dataverse
    sandbox's organisation, the BlackBerry UEM sandbox and a cancellation for the Ingram Micro
    sandbox. Idempotent (names and keys are unique): make run calls it on every start."""
    from psycopg.types.json import Jsonb

    with conn.transaction():
        conn.execute("INSERT INTO servers (name, role, host) VALUES ('panelflow', 'control', '127.0.0.1')"
                     " ON CONFLICT (name) DO NOTHING")
        monitors = [
            ("Airflow API server", "web", {"url": f"http://127.0.0.1:{ports['api']}/api/v2/monitor/health",
                                           "contains": "metadatabase"}),
            ("SMTP relay", "mail", {"host": "127.0.0.1", "port": ports["smtp"]}),
            ("Panel database", "tcp", {"host": "127.0.0.1", "port": ports["pg"]}),
            ("Card gateway", "web", {"url": f"http://127.0.0.1:{ports['gateway']}/_sandbox/health"}),
            ("Registrar API", "tcp", {"host": "127.0.0.1", "port": ports["registrar"]}),
            ("Microsoft sandbox", "tcp", {"host": "127.0.0.1", "port": ports["microsoft"]}),
        ]
        for name, kind, params in monitors:
            conn.execute("INSERT INTO monitors (name, kind, server_id, params) SELECT %s, %s, id, %s FROM servers"
                         " WHERE name = 'panelflow' ON CONFLICT (name) DO UPDATE SET params = EXCLUDED.params"
                         " WHERE monitors.params IS DISTINCT FROM EXCLUDED.params",   # make run's ports may move
                         (name, kind, Jsonb(params)))
        # EPP has no domain list: the sync probes the panel's domains under the account's zones, so the
        # panel holds the sandbox registry's (customer001.example …, include/sandbox/registrar.py)
        conn.execute("INSERT INTO registrar_accounts (name, conn_id, zones) VALUES ('Sandbox registrar', 'registrar',"
                     " '{example}') ON CONFLICT DO NOTHING")
        conn.execute("INSERT INTO domains (customer_id, name, contact_email, verification_token, status, verified_at)"
                     " SELECT coalesce(c.id, 1), n.name, 'hostmaster@' || n.name, md5(n.name), 'verified', now()"
                     " FROM (SELECT 'customer' || lpad(g::text, 3, '0') || '.example' AS name"
                     "       FROM generate_series(1, 24) g UNION ALL SELECT 'broken-detail.example') n"
                     " CROSS JOIN (SELECT min(id) AS id FROM customers) c"
                     " ON CONFLICT (name) DO NOTHING")
        conn.execute("INSERT INTO csp_profiles (name, conn_id, country) VALUES ('Sandbox CSP', 'partner_center', 'GB')"
                     " ON CONFLICT DO NOTHING")
        for i, tenant in enumerate(graph_tenants or ()):  # the Microsoft sandbox's tenants, linked to customers
            conn.execute("INSERT INTO m365_tenants (tenant_id, conn_id, customer_id) SELECT %s, %s, min(id)"
                         " FROM customers WHERE id > %s ON CONFLICT (tenant_id) DO NOTHING",
                         (tenant, f"m365_tenant_{i}", i))
        # the Dataverse sandbox's organisation (local.CRM_ORG) as the first customer's CRM (connection
        # dynamics), and the BlackBerry UEM sandbox as the UEM server (connection blackberry_uem)
        if "dataverse" in ports:  # one organisation on connection dynamics, at the sandbox's port of this start
            url = f"http://127.0.0.1:{ports['dataverse']}/demo"
            conn.execute("UPDATE crm_organizations SET url = %s WHERE conn_id = 'dynamics' AND url <> %s", (url, url))
            conn.execute("INSERT INTO crm_organizations (customer_id, url, conn_id) SELECT id, %s, 'dynamics'"
                         " FROM customers WHERE NOT EXISTS (SELECT FROM crm_organizations WHERE conn_id = 'dynamics')"
                         " ORDER BY id LIMIT 1 ON CONFLICT (url) DO NOTHING", (url,))
        if "blackberry" in ports:
            conn.execute("INSERT INTO bb_uem_servers (name, conn_id) VALUES ('Sandbox UEM', 'blackberry_uem')"
                         " ON CONFLICT DO NOTHING")
        if "ingram" in ports:  # the first subscription bought through Ingram (the sandbox's order 20-SBX001),
            # its customer asking yesterday to end it at its renewal in 20 days: inside its 30-day notice window
            conn.execute("INSERT INTO ingram_subscriptions (subscription_id, customer_id, conn_id,"
                         " ingram_subscription_id, ingram_order_number, product, renewal_date)"
                         " SELECT id, customer_id, 'ingram', 'SUB-20-SBX001', '20-SBX001', 'Acronis Cyber Protect',"
                         " current_date + 20 FROM subscriptions ORDER BY id LIMIT 1 ON CONFLICT DO NOTHING")
            conn.execute("INSERT INTO ingram_cancellations (ingram_subscription_id, term_end, requested_at, requested_by)"
                         " SELECT s.id, s.renewal_date, now() - interval '1 day', 'operator:demo'"
                         " FROM ingram_subscriptions s WHERE s.ingram_subscription_id = 'SUB-20-SBX001'"
                         " AND NOT EXISTS (SELECT FROM ingram_cancellations c WHERE c.ingram_subscription_id = s.id)")


def _conninfo(url: str) -> str:
    """The panel DB URL as libpq takes it."""
    return sqlalchemy_url(url).replace("postgresql+psycopg://", "postgresql://")


def load_demo(url: str, customers: int = 200, now: datetime | None = None) -> dict[str, int]:
    """Load the demo rows; returns rows per table. ``now`` anchors the ages (default: load time)."""
    now = now or datetime.now(timezone.utc)
    with psycopg.connect(_conninfo(url)) as conn:
        for statement in DEMO:
            conn.execute(statement, {"now": now, "n": customers})
        conn.commit()
        from zoneinfo import ZoneInfo

        load_billing_demo(conn, customers, now.astimezone(ZoneInfo("Europe/London")).date())
        tables = ("sessions", "session_history", "service_queue_logs", "voice_bill_records", "temp_data",
                  "azure_rates", "o365_subscription_reconciliations", "email_logs", "email_outbox",
                  "customers", "subscriptions", "subscription_addons", "ocs_call_records", "sip_usage")
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables}


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m panelflow.dev.demo", description="Load demo data into the panel DB.")
    p.add_argument("url", nargs="?", help="panel DB URL (default: the Airflow connection panel_db)")
    p.add_argument("--customers", type=int, default=200)
    p.add_argument("--local-ports", metavar="api=8080,smtp=8025,…",
                   help="make run's ports: also add monitors of its components and the sandbox registrar")
    p.add_argument("--graph-tenants", metavar="ID,ID", default="",
                   help="the Microsoft sandbox's tenant ids (connections m365_tenant_<i>)")
    a = p.parse_args()
    if a.url is None:
        from panelflow.db import url_from_connection

        a.url = url_from_connection()
    if a.local_ports:
        ports = {k: int(v) for k, v in (item.split("=") for item in a.local_ports.split(","))}
        load_for_make_run(a.url, ports, [t for t in a.graph_tenants.split(",") if t], a.customers)
    else:
        counts = load_demo(a.url, a.customers)
        print("demo data: " + ", ".join(f"{t} {n}" for t, n in counts.items()))


def load_for_make_run(url: str, ports: dict[str, int], graph_tenants: list[str], customers: int = 200) -> None:
    """The demo rows plus the monitors and sandbox records of make run's own components; called
    in-process by ``panelflow.dev.prepare`` (which has the connection already) as well as here."""
    counts = load_demo(url, customers)
    print("demo data: " + ", ".join(f"{t} {n}" for t, n in counts.items()), flush=True)
    load_sandbox_records(url, ports, graph_tenants)
    _vault_demo_cards(ports["gateway"])


def load_sandbox_records(url: str, ports: dict[str, int], graph_tenants: list[str]) -> None:
    """:func:`load_local_sandbox` on its own: on every later start of make run, so an existing
    ``.panelflow`` gets the records of a sandbox added since (what is there already stays)."""
    with psycopg.connect(_conninfo(url)) as conn:
        load_local_sandbox(conn, ports, graph_tenants)


def _vault_demo_cards(port: int) -> None:
    """Move the demo cards into the Stripe sandbox's vault now, as ProvisioningWork 27's first
    run would, so BillingWork charges from make run's first run."""
    import logging
    import time
    import urllib.request

    from panelflow.hooks.panel_db import PanelDatabaseHook
    from panelflow.steps.payment_profiles import VaultIncomplete, create_pci_credit_profiles

    deadline = time.monotonic() + 30
    while True:  # the sandbox starts beside the database preparation
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/_sandbox/health", timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    try:
        vault = create_pci_credit_profiles(panel_db=PanelDatabaseHook(), log=logging.getLogger(__name__))
        print(f"card vault: {vault['profiles_vaulted']} demo cards moved into the Stripe sandbox", flush=True)
    except VaultIncomplete as exc:
        print(f"card vault: {exc} (ProvisioningWork 27 finishes it)", flush=True)


if __name__ == "__main__":
    main()
