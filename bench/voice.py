"""A day of SIP call records through panelflow (imported, rated, bundled) against a raw INSERT … SELECT.

ours:     CallDataProcessWork's ``import_sip_call_records`` (the platform's ``acc_cdrs`` streamed by
          ``SipPlatformHook.copy_call_records`` — COPY out of the platform DB, COPY into the panel DB,
          one set-based insert with the caller's company and subscriber), then BillingWork's
          ``sip_billing_and_exports`` for the day (longest-prefix rating, an invoice per customer,
          a line and an export task per subscription), then GroupActionWorkLync's
          ``process_call_bundles`` (minutes per voice bundle and month).
baseline: one ``INSERT INTO scratch_usage … SELECT`` of the same call records, already sitting in the
          panel DB, into a table shaped like the panel's call records (``LIKE sip_usage INCLUDING ALL``
          and its foreign key to ``subscriptions``, which LIKE leaves out), joined to the companies
          and subscribers that fill its columns — the least a database can do to keep that many
          records.

Data: ``panelflow.dev.demo``'s billing provider; every 'SIP Trunk' subscription is a voice company
with 5 subscribers (each with a number) and a voice bundle; 1,000,000 calls that ended in one day
(BENCH_SMALL=1: 50,000), a few of them from unknown callers. The platform DB is a Kamailio-shaped
database (Debian's schema files, the hook's additions) on the same embedded PostgreSQL as the panel
DB (durable, fsync on), one process, no Kamailio process (the records are generated into it). Ends
with ``voice: … records/s … ratio=R target=2.0`` (R = ours / baseline time).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "plugins"))
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="panelflow-bench-"))
SMALL = os.environ.get("BENCH_SMALL") == "1"
RECORDS = 50_000 if SMALL else 1_000_000
CUSTOMERS = 2_000 if SMALL else 20_000
SUBSCRIBERS = 5  # per company
TARGET = 2.0
DAY = date(2026, 12, 1)
KAMAILIO_SCHEMA = Path("/usr/share/kamailio/postgres")
CONN_ID = "sip_platform_bench"

# Voice companies, their subscribers, numbers and bundles for every SIP Trunk subscription.
SEED_PANEL = [
    "INSERT INTO sip_platforms (name, conn_id) VALUES ('bench', %(conn_id)s)",
    """INSERT INTO voice_companies (platform_id, customer_id, subscription_id, sip_domain, channel_limit, created_at)
       SELECT 1, s.customer_id, s.id, 'c' || s.id || '.bench.example', 30, %(day_start)s
       FROM subscriptions s WHERE s.plan = 'SIP Trunk'""",
    """INSERT INTO voice_subscribers (company_id, username, external_ref, created_at)
       SELECT c.id, 'u' || k, c.id * 10 + k, %(day_start)s FROM voice_companies c CROSS JOIN generate_series(1, %(subs)s) k""",
    """INSERT INTO voice_numbers (platform_id, number, subscriber_id, assigned_at)
       SELECT 1, (4420000000000 + s.id)::text, s.id, %(day_start)s FROM voice_subscribers s""",
    """INSERT INTO voice_bundles (subscription_id, name, minutes_per_month)
       SELECT subscription_id, 'SIP 2000', 2000 FROM voice_companies""",
]

# The day's calls on the platform: callers spread over every company's subscribers, destinations
# mixed (dialled numbers of the demo's rate table, on-net calls by user name, to a number), and one
# in 500 from a domain the panel does not know. Ended in the day, started at most 20 minutes earlier.
SEED_PLATFORM = """
INSERT INTO acc_cdrs (start_time, end_time, duration, callid, caller, caller_domain, callee, callee_domain)
SELECT e - make_interval(secs => d), e, d, 'bench-' || g || '@10.0.0.1', 'u' || (1 + g %% %(subs)s),
       CASE WHEN g %% 500 = 7 THEN 'stranger.example' ELSE 'c' || c.id || '.bench.example' END,
       (ARRAY['442079460000', '447700900123', '4930123456', '33142685300', '12125550100', 'u1',
              '4420000000001'])[1 + g %% 7],
       'c' || c.id || '.bench.example'
FROM generate_series(1, %(n)s::bigint) g
CROSS JOIN LATERAL (SELECT %(day)s::timestamp + make_interval(secs => 1200 + (g * 7919 %% 85000)) AS e,
                           (g * 104729 %% 1800)::double precision + 0.25 AS d) t
JOIN companies c ON c.n = 1 + g %% %(companies)s
"""

BASELINE = """
INSERT INTO scratch_usage (subscription_id, sip_account, destination, started_at, duration_seconds, platform_id, callid,
                           ended_at, voice_subscriber_id)
SELECT c.subscription_id, a.caller || '@' || a.caller_domain, a.callee, a.start_time AT TIME ZONE 'UTC',
       round(a.duration)::int, 1, a.callid, a.end_time AT TIME ZONE 'UTC', s.id
FROM scratch_acc_cdrs a
JOIN voice_companies c ON c.platform_id = 1 AND c.sip_domain = a.caller_domain
JOIN voice_subscribers s ON s.company_id = c.id AND s.username = a.caller
"""


def _load_platform(conn, companies: list[str]) -> None:
    from panelflow.hooks.sip_platform import SCHEMA_ADDITIONS

    for name in ("standard", "acc", "domain"):
        conn.execute((KAMAILIO_SCHEMA / f"{name}-create.sql").read_text())
    conn.execute("CREATE TABLE dbaliases (id serial PRIMARY KEY, alias_username varchar(64) NOT NULL DEFAULT '',"
                 " alias_domain varchar(64) NOT NULL DEFAULT '', username varchar(64) NOT NULL DEFAULT '',"
                 " domain varchar(64) NOT NULL DEFAULT '')")   # alias_db's table, for the hook's unique key
    for statement in SCHEMA_ADDITIONS:
        conn.execute(statement)
    conn.execute("CREATE TEMP TABLE companies (n int, id bigint)")
    with conn.cursor().copy("COPY companies FROM STDIN") as copy:
        for n, company in enumerate(companies, 1):
            copy.write_row((n, company))
    conn.execute(SEED_PLATFORM, {"n": RECORDS, "subs": SUBSCRIBERS, "companies": len(companies),
                                 "day": datetime(DAY.year, DAY.month, DAY.day)})


def main() -> None:
    import psycopg

    from panelflow.db import upgrade
    from panelflow.dev.demo import load_billing_demo
    from panelflow.dev.postgres import EmbeddedPostgres
    from panelflow.hooks.panel_db import PanelDatabaseHook
    from panelflow.hooks.sip_platform import SipPlatformHook
    from panelflow.step import Interval
    from panelflow.steps.voice.bundles import process_call_bundles
    from panelflow.steps.voice.calls import import_sip_call_records
    from panelflow.steps.voice_billing import sip_billing_and_exports

    tmp = Path(tempfile.mkdtemp(prefix="panelflow-bench-voice-"))
    pg = EmbeddedPostgres(tmp / "pg").start()  # durable (fsync on), as in production
    day_start = datetime(DAY.year, DAY.month, DAY.day, tzinfo=timezone.utc)
    interval = Interval(day_start, day_start + timedelta(days=1), "UTC")
    try:
        pg.create_database("panel")
        pg.create_database("kamailio")
        url, platform_url = pg.uri("panel"), pg.uri("kamailio")
        upgrade(url)
        os.environ["AIRFLOW_CONN_PANEL_DB"] = url
        os.environ[f"AIRFLOW_CONN_{CONN_ID.upper()}"] = json.dumps({
            "conn_type": "panelflow_sip_platform", "host": "127.0.0.1", "port": pg.port, "schema": "kamailio",
            "login": "postgres", "extra": {"rpc_url": "http://127.0.0.1:9/RPC"}})   # no RPC is needed to read records
        t = time.perf_counter()
        with psycopg.connect(url, autocommit=True) as conn, psycopg.connect(platform_url, autocommit=True) as platform:
            load_billing_demo(conn, CUSTOMERS, DAY + timedelta(days=1), usage=False)
            for statement in SEED_PANEL:
                conn.execute(statement, {"conn_id": CONN_ID, "day_start": day_start, "subs": SUBSCRIBERS})
            companies = [row[0] for row in conn.execute("SELECT subscription_id FROM voice_companies ORDER BY id")]
            _load_platform(platform, companies)
            # the baseline's source: the same records, in the panel DB
            conn.execute("CREATE TABLE scratch_acc_cdrs (start_time timestamp, end_time timestamp, duration real,"
                         " callid text, caller text, caller_domain text, callee text, callee_domain text)")
            with platform.cursor().copy("COPY (SELECT start_time, end_time, duration, callid, caller, caller_domain,"
                                        " callee, callee_domain FROM acc_cdrs) TO STDOUT") as out, \
                    conn.cursor().copy("COPY scratch_acc_cdrs FROM STDIN") as into:
                for chunk in out:
                    into.write(chunk)
            # sip_usage's columns, keys and indexes, and its one foreign key (LIKE leaves those out)
            conn.execute("CREATE TABLE scratch_usage (LIKE sip_usage INCLUDING ALL,"
                         " FOREIGN KEY (subscription_id) REFERENCES subscriptions)")
            conn.execute("VACUUM ANALYZE")
            platform.execute("VACUUM ANALYZE")
            print(f"loaded {len(companies):,} voice companies, {len(companies) * SUBSCRIBERS:,} subscribers,"
                  f" {RECORDS:,} call records in {time.perf_counter() - t:.1f} s")
            conn.execute("SELECT count(*) FROM scratch_acc_cdrs; SELECT count(*) FROM voice_subscribers")
            platform.execute("SELECT count(*) FROM acc_cdrs")  # both runs start from a warm cache
            conn.execute("CHECKPOINT")  # and with no dirty pages of what came before

            t = time.perf_counter()
            baseline_rows = conn.execute(BASELINE).rowcount
            baseline = time.perf_counter() - t
            conn.execute("CHECKPOINT")

        panel_db = PanelDatabaseHook()
        # what a worker has done before its first task: modules imported, connections read
        with SipPlatformHook(CONN_ID) as hook:
            hook.get_conn()
        panel_db.get_conn().close()
        timings = {}
        t = time.perf_counter()
        imported = import_sip_call_records(panel_db, interval)
        timings["import"] = time.perf_counter() - t
        t = time.perf_counter()
        billed = sip_billing_and_exports(panel_db, interval)
        timings["bill"] = time.perf_counter() - t
        t = time.perf_counter()
        bundled = process_call_bundles(panel_db, interval)
        timings["bundles"] = time.perf_counter() - t
        ours = sum(timings.values())
        assert imported["records_read"] == RECORDS, imported
        assert imported["records_imported"] == baseline_rows, (imported, baseline_rows)
        assert billed["invoices"] > 0 and bundled["bundle_periods"] > 0, (billed, bundled)
    finally:
        pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)   # a full run leaves ~2 GB of database behind

    print(f"import: {imported['records_imported']:,} imported, {imported['records_skipped']:,} skipped"
          f" {imported.get('skipped', {})}")
    print(f"billing: {billed['calls_billed']:,} calls billed, {billed['invoices']:,} invoices,"
          f" {billed['export_tasks']:,} export tasks, skipped {billed.get('skipped', {})}")
    print(f"bundles: {bundled['bundle_periods']:,} bundle periods, {bundled['bundle_periods_over_limit']:,} over")
    print(f"baseline (INSERT … SELECT of {baseline_rows:,} records): {baseline:.2f} s"
          f"  {baseline_rows / baseline:,.0f} records/s")
    print("ours: " + ", ".join(f"{k} {v:.2f} s" for k, v in timings.items()) + f" = {ours:.2f} s"
          f"  {RECORDS / ours:,.0f} records/s")
    print(f"voice: records={RECORDS} records/s={RECORDS / ours:.0f} baseline_records/s={baseline_rows / baseline:.0f}"
          f" ratio={ours / baseline:.2f} target={TARGET}")


if __name__ == "__main__":
    main()
