"""SyncADUsersWork's user sync against a real Samba AD DC: a full sync of N users, then an
incremental one after 10 users changed.

ours:  ``panelflow.steps.active_directory.sync.sync_ad_users`` on one directory whose ``base_dn`` holds
       N users in 10 organisation OUs (N = 10,000; BENCH_SMALL=1: 1,000), written to a real
       (durable) PostgreSQL. First run: full (every user read and written). Then 10 users get a new
       displayName and the next run (an hour later) is incremental: it must read and write exactly
       those 10 (``users_read``/``users_written`` of the step's report) — the rest of the directory
       is neither read nor rewritten.

The DC (tests/samba_dc.py, LDAPS on 127.0.0.1:636, under the same lock as the tests) is kept in
``/var/tmp/panelflow-bench-samba-dc`` (``BENCH_SAMBA_DIR``): the first run provisions it and adds
the users (ldap3 ``add`` with ``unicodePwd`` and ``userAccountControl=512``, ~20–30 ms a user);
later runs start it and add only what is missing. Ends with
``ad_sync: full=… s incremental=… s users=N changed=10 read=… written=… ratio=R target=0.05``
(R = incremental / full time).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "plugins"))
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="panelflow-bench-"))
SMALL = os.environ.get("BENCH_SMALL") == "1"
USERS = 1_000 if SMALL else 10_000
ORGS = 10
CHANGED = 10
TARGET = 0.05
SAMBA_DIR = Path(os.environ.get("BENCH_SAMBA_DIR", "/var/tmp/panelflow-bench-samba-dc"))


def populate(dc, base: str) -> tuple[int, float]:
    """Make sure ``base`` holds USERS users in ORGS OUs → (users added now, seconds it took)."""
    from ldap3.core.exceptions import LDAPEntryAlreadyExistsResult

    conn = dc.ldap()
    try:
        conn.add(base, ["top", "organizationalUnit"])
    except LDAPEntryAlreadyExistsResult:
        pass
    orgs = [f"OU=Org {i:02},{base}" for i in range(ORGS)]
    for dn in orgs:
        try:
            conn.add(dn, ["top", "organizationalUnit"])
        except LDAPEntryAlreadyExistsResult:
            pass
    existing = set()
    for item in conn.extend.standard.paged_search(base, "(&(objectCategory=person)(objectClass=user))",
                                                  attributes=["sAMAccountName"], paged_size=1000, generator=True):
        if item.get("type") == "searchResEntry":
            existing.add(item["raw_attributes"]["sAMAccountName"][0].decode())
    missing = [i for i in range(USERS) if f"b{USERS}.{i:05}" not in existing]
    t = time.perf_counter()
    for n, i in enumerate(missing, 1):
        sam = f"b{USERS}.{i:05}"
        conn.add(f"CN={sam},{orgs[i % ORGS]}", ["top", "person", "organizationalPerson", "user"], {
            "sAMAccountName": sam, "userPrincipalName": f"{sam}@bench.example", "givenName": "Bench",
            "sn": f"User {i}", "displayName": f"Bench User {i}", "mail": f"{sam}@bench.example",
            "title": "Engineer", "department": f"Dept {i % 7}",
            "unicodePwd": f'"Bench!Passw0rd{i}"'.encode("utf-16-le"), "userAccountControl": "512"})
        if n % 1000 == 0:
            print(f"  added {n:,} of {len(missing):,} users ({time.perf_counter() - t:.0f} s)", flush=True)
    return len(missing), time.perf_counter() - t


def main() -> None:
    import psycopg

    from panelflow.db import upgrade
    from panelflow.dev.postgres import EmbeddedPostgres
    from panelflow.hooks.panel_db import PanelDatabaseHook
    from panelflow.step import Interval
    from panelflow.steps.active_directory.sync import sync_ad_users
    from samba_dc import SambaDC

    base = f"OU=Bench{USERS},DC=test,DC=local"
    tmp = Path(tempfile.mkdtemp(prefix="panelflow-bench-ad-"))
    dc = SambaDC(SAMBA_DIR, keep=True)
    t = time.perf_counter()
    reused = dc.provisioned()
    dc.start()
    started = time.perf_counter() - t
    pg = EmbeddedPostgres(tmp / "pg").start()  # durable (fsync on), as in production
    try:
        added, adding = populate(dc, base)
        pg.create_database("panel")
        db = pg.uri("panel")
        upgrade(db)
        os.environ["AIRFLOW_CONN_PANEL_DB"] = db
        os.environ["AIRFLOW_CONN_AD_BENCH"] = dc.connection(base_dn=base, receive_timeout=300)
        with psycopg.connect(db) as conn:
            conn.execute("INSERT INTO ad_directories (name, conn_id, base_dn) VALUES ('bench', 'ad_bench', %s)", (base,))
        hook = PanelDatabaseHook()
        now = datetime.now(timezone.utc).replace(minute=10, second=0, microsecond=0)

        t = time.perf_counter()
        full = sync_ad_users(hook, Interval(now - timedelta(hours=1), now), {}, None)
        full_s = time.perf_counter() - t
        assert full["directories"]["bench"]["mode"] == "full", full
        assert full["users_read"] == USERS and full["users_written"] == USERS, full

        stamp = time.strftime("%H%M%S")
        changed = [f"CN=b{USERS}.{i:05},OU=Org {i % ORGS:02},{base}" for i in range(0, USERS, USERS // CHANGED)]
        assert len(changed) == CHANGED
        for dn in changed:
            dc.modify(dn, displayName=f"Changed {stamp}")
        later = now + timedelta(hours=1)
        t = time.perf_counter()
        inc = sync_ad_users(hook, Interval(now, later), {}, None)
        inc_s = time.perf_counter() - t
        assert inc["directories"]["bench"]["mode"] == "incremental", inc
        read, written = inc["users_read"], inc["users_written"]
        assert (read, written) == (CHANGED, CHANGED), inc
        with psycopg.connect(db) as conn:
            (rows,), (renamed,) = conn.execute("SELECT count(*) FROM ad_users").fetchone(), conn.execute(
                "SELECT count(*) FROM ad_users WHERE display_name = %s AND synced_at = %s",
                (f"Changed {stamp}", later)).fetchone()
        assert (rows, renamed) == (USERS, CHANGED), (rows, renamed)
    finally:
        pg.stop()
        dc.stop()

    print(f"directory: {USERS:,} users in {ORGS} organisation OUs under {base}; DC "
          f"{'re-used' if reused else 'provisioned'} and started in {started:.1f} s"
          + (f", {added:,} users added in {adding:.1f} s" if added else ", no users to add"))
    print(f"full sync:        {full_s:6.2f} s  read {full['users_read']:,}  written {full['users_written']:,}"
          f"  ({USERS / full_s:,.0f} users/s)")
    print(f"incremental sync: {inc_s:6.2f} s  read {read}  written {written}  (after {CHANGED} users changed)")
    print(f"ad_sync: full={full_s:.2f} s incremental={inc_s:.2f} s users={USERS} changed={CHANGED} read={read} "
          f"written={written} ratio={inc_s / full_s:.3f} target={TARGET}")


if __name__ == "__main__":
    main()
