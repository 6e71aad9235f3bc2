"""One Microsoft 365 tenant's first full sync from the Graph sandbox into PostgreSQL, against only
fetching the same pages, in one run.

ours:     Office365SyncWork's step (``sync_tenant_entities``) on one tenant of N users and N/5
          groups (5 members each): organisation, domains, SKUs, policies, the users and groups
          delta rounds and the contacts, every page written to a real (durable) PostgreSQL.
baseline: the same requests through the same hook (token, paging, JSON decoding, checks), the
          pages thrown away — the least a sync can cost against this server.

The sandbox (include/sandbox/microsoft.py) runs in its own process, as a remote Graph would,
with pages of 999. N = 100,000 users and 20,000 groups (BENCH_SMALL=1: 10,000 and 2,000). Three
rounds, baseline and sync interleaved (each sync a first sync into emptied tables), medians
reported. Ends with ``o365_sync: … users/s=… ratio=R target=1.3`` (R = ours / baseline time).
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "plugins"))
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="panelflow-bench-"))
SMALL = os.environ.get("BENCH_SMALL") == "1"
USERS = 10_000 if SMALL else 100_000
GROUPS = USERS // 5
MEMBERS = 5
CONTACTS = 200
TARGET = 1.3
ROUNDS = 3


def _sandbox_module():
    import importlib.util

    name = "panelflow_sandbox_microsoft"
    spec = importlib.util.spec_from_file_location(name, ROOT / "include" / "sandbox" / "microsoft.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


async def fetch_only(conn_id: str) -> int:
    """The requests the sync makes, in its order, through the same hook; pages discarded."""
    from panelflow.hooks.microsoft_graph import MicrosoftGraphHook
    from panelflow.steps.microsoft365.tenant_sync import POLICIES, PREFER, URLS

    pages = 0
    async with MicrosoftGraphHook(conn_id) as hook:
        for url in ("organization", "domains", "subscribedSkus"):
            async for _ in hook.pages(url):
                pages += 1
        for name in POLICIES:
            await hook.get(f"policies/{name}", collection=False)
        for entity in ("users", "groups"):
            async for _ in hook.pages(URLS[entity], headers=PREFER):
                pages += 1
        async for _ in hook.pages(URLS["contacts"]):
            pages += 1
    return pages


def main() -> None:
    import logging

    import psycopg

    from panelflow.db import upgrade
    from panelflow.dev.postgres import EmbeddedPostgres, free_port
    from panelflow.hooks.panel_db import PanelDatabaseHook
    from panelflow.step import Interval
    from panelflow.steps.microsoft365.tenant_sync import sync_tenant_entities

    logging.getLogger("airflow.task.hooks").setLevel(logging.WARNING)   # the provider logs every adapter built
    ms = _sandbox_module()
    mg = ms.load("microsoft_graph")
    tmp = Path(tempfile.mkdtemp(prefix="panelflow-bench-o365-"))
    pg = EmbeddedPostgres(tmp / "pg").start()  # durable (fsync on), as in production
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    t = time.perf_counter()
    server = subprocess.Popen(
        [sys.executable, str(ROOT / "include" / "sandbox" / "microsoft.py"), "--port", str(port),
         "--graph-tenants", "1", "--graph-users", str(USERS), "--graph-groups", str(GROUPS),
         "--graph-members", str(MEMBERS), "--graph-contacts", str(CONTACTS), "--graph-page-size", "999"],
        stdout=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline()
        assert line.startswith("microsoft sandbox on"), line
        generated = time.perf_counter() - t
        pg.create_database("panel")
        db = pg.uri("panel")
        upgrade(db)
        os.environ["AIRFLOW_CONN_PANEL_DB"] = db
        api = mg.GraphApi(ms.TokenIssuer(), tenants=1, users_per_tenant=0, groups_per_tenant=0)  # same ids, no data
        os.environ["AIRFLOW_CONN_M365_BENCH"] = json.dumps(api.connection(0, url))
        with psycopg.connect(db) as conn:
            conn.execute("INSERT INTO m365_tenants (tenant_id, conn_id) VALUES (%s, 'm365_bench')", (api.tenant_id(0),))

        asyncio.run(fetch_only("m365_bench"))          # warm-up: both runs start with the server's lists sorted
        now = datetime(2026, 11, 20, 8, tzinfo=timezone.utc)
        baselines, runs = [], []
        for _ in range(ROUNDS):     # interleaved, so a change of load on the machine hits both alike
            t = time.perf_counter()
            pages = asyncio.run(fetch_only("m365_bench"))
            baselines.append(time.perf_counter() - t)
            with psycopg.connect(db) as conn:      # every round is the tenant's first sync
                conn.execute("TRUNCATE m365_users, m365_groups, m365_group_members, m365_contacts, m365_domains,"
                             " m365_subscribed_skus, m365_policies, m365_sync_state")
                conn.execute("UPDATE m365_tenants SET first_synced_at = NULL")
            t = time.perf_counter()
            summary = sync_tenant_entities(PanelDatabaseHook(), Interval(now - timedelta(hours=4), now), {}, None)
            runs.append(time.perf_counter() - t)
            assert summary["tenants_synced"] == 1 and summary["first_syncs"] == 1, summary
        with psycopg.connect(db) as conn:
            users, licences, groups, members = conn.execute(
                "SELECT (SELECT count(*) FROM m365_users), (SELECT count(*) FROM m365_user_licenses),"
                " (SELECT count(*) FROM m365_groups), (SELECT count(*) FROM m365_group_members)").fetchone()
        assert (users, groups) == (USERS, GROUPS), (users, groups)
        baseline, ours = statistics.median(baselines), statistics.median(runs)
    finally:
        server.terminate()
        server.wait(10)
        pg.stop()

    rows = users + groups + members + CONTACTS
    print(f"tenant: {USERS:,} users ({licences:,} licences), {GROUPS:,} groups ({members:,} members),"
          f" {CONTACTS} contacts; sandbox generated in {generated:.1f} s")
    print(f"pages: {pages} ({summary['graph_requests']} requests in the sync); medians of {ROUNDS} interleaved rounds")
    print("rounds (baseline / ours, s): " + ", ".join(f"{b:.2f} / {o:.2f}" for b, o in zip(baselines, runs)))
    print(f"baseline (fetch the same pages, discard):  {baseline:.2f} s  {USERS / baseline:,.0f} users/s")
    print(f"ours (fetch and write {rows:,} rows):       {ours:.2f} s  {USERS / ours:,.0f} users/s")
    print(f"o365_sync: users={USERS} groups={GROUPS} baseline={baseline:.2f}s ours={ours:.2f}s "
          f"users/s={USERS / ours:.0f} ratio={ours / baseline:.2f} target={TARGET}")


if __name__ == "__main__":
    main()
