"""TransferWork 1 against real servers: two MariaDB 10.11 instances (old and new database server) and
two OpenSSH ``sshd`` (old and new web server's content over SFTP, host keys pinned), all on
127.0.0.1. The kill test runs the step in a child process, kills it with SIGKILL in the middle of
the file copy, and lets the next run finish the order."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from harness import ROOT
from harness.mariadb import MariaDB
from harness.sftp_server import SftpServer
from panelflow.step import Interval

T0 = datetime(2026, 3, 2, 10, 4, tzinfo=timezone.utc)
SITE = "shop.example"
CHILD = """
import sys, time
from datetime import datetime, timedelta
from panelflow.hooks.sftp_files import SftpFiles
real = SftpFiles.put_atomic
def slow(self, *args, **kwargs):          # the test's brake: the child is killed in the middle of the copy
    result = real(self, *args, **kwargs)
    time.sleep(0.05)
    return result
SftpFiles.put_atomic = slow
from panelflow.hooks.panel_db import PanelDatabaseHook
from panelflow.step import Interval
from panelflow.steps.hosting.transfers import process_transfer_queue
end = datetime.fromisoformat(sys.argv[1])
print(process_transfer_queue(PanelDatabaseHook(), Interval(end - timedelta(minutes=10), end)))
"""


def at(end, minutes=10):
    return Interval(end - timedelta(minutes=minutes), end)


@pytest.fixture(scope="module")
def databases(tmp_path_factory):
    """DB1 holds the customer's database ``shop`` and its user; DB2 is the new server."""
    with MariaDB(tmp_path_factory.mktemp("db1")) as db1, MariaDB(tmp_path_factory.mktemp("db2")) as db2:
        db1.execute("CREATE DATABASE shop")
        db1.execute("CREATE TABLE shop.orders (id int PRIMARY KEY, customer varchar(100), note text)")
        db1.execute("CREATE TABLE shop.items (id int AUTO_INCREMENT PRIMARY KEY, order_id int, sku varchar(20))")
        with db1.connect(database="shop") as conn, conn.cursor() as cur:
            cur.executemany("INSERT INTO orders VALUES (%s, %s, %s)",
                            [(i, f"customer {i} “ü”", "x" * (i % 50)) for i in range(1, 301)])
            cur.executemany("INSERT INTO items (order_id, sku) VALUES (%s, %s)",
                            [(i, sku) for i in range(1, 301) for sku in ("A", "B")])
        db1.execute("CREATE USER 'shopuser'@'%' IDENTIFIED BY 'Sh0p!pass'")
        db1.execute("GRANT ALL PRIVILEGES ON `shop`.* TO 'shopuser'@'%'")
        yield {"DB1": db1, "DB2": db2}


def rows(db, database="shop"):
    return {t: db.execute(f"SELECT * FROM {database}.{t} ORDER BY id") for t in ("orders", "items")}


@pytest.fixture
def world(hosting, sql, databases, tmp_path, monkeypatch):
    """WEB1 → WEB2 (sshd each, the IIS servers' content over SFTP) and DB1 → DB2, as hosting_servers rows."""
    from sandbox.psrp import psrp_connection

    sql("TRUNCATE hosting_transfers RESTART IDENTITY")
    databases["DB2"].execute("DROP DATABASE IF EXISTS shop")
    databases["DB2"].execute("DROP USER IF EXISTS 'shopuser'@'%'")
    subscription = hosting.subscriptions[0]
    ids, web = {}, {}
    for name in ("WEB1", "WEB2"):
        web[name] = SftpServer(tmp_path / name).start()
        monkeypatch.setenv(f"AIRFLOW_CONN_{name}_FILES", web[name].connection())
        ids[name] = hosting.server(name, "web", "iis", psrp_connection(f"{name.lower()}.corp.example"))
        sql("UPDATE hosting_servers SET sftp_conn_id = %s WHERE id = %s", (f"{name.lower()}_files", ids[name]))
    for name, db in databases.items():
        ids[name] = hosting.server(name, "database", "mysql", db.connection_uri())
    source = web["WEB1"].root / "sites" / SITE
    for i in range(40):                              # the site's content: nested folders, binary files
        path = source / ("wwwroot" if i % 2 else "wwwroot/img") / f"file{i:02}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(4096 + i))
    (source / "web.config").write_text("<configuration/>")
    ids["site"] = hosting.site(SITE, ids["WEB1"], status="active", physical_path=str(source))
    ids["database"], = sql("INSERT INTO hosted_databases (subscription_id, db_server_id, name) VALUES (%s, %s, 'shop')"
                           " RETURNING id", (subscription, ids["DB1"]))[0]
    sql("INSERT INTO hosted_database_users (database_id, db_server_id, user_name) VALUES (%s, %s, 'shopuser')",
        (ids["database"], ids["DB1"]))
    target = web["WEB2"].root / "sites" / SITE
    yield {"ids": ids, "web": web, "source": source, "target": target, "sql": sql, "subscription": subscription}
    for srv in web.values():
        srv.stop()


def order(sql, ids, target, *, site=True, database=True, from_web="WEB1", to_web="WEB2"):
    """The panel's orders: the site (WEB1 → WEB2) and its database (DB1 → DB2), one row each."""
    made = []
    if site:
        made += sql("INSERT INTO hosting_transfers (site_id, from_server_id, to_server_id, target_path)"
                    " VALUES (%s, %s, %s, %s) RETURNING id", (ids["site"], ids[from_web], ids[to_web], str(target)))
    if database:
        made += sql("INSERT INTO hosting_transfers (database_id, from_server_id, to_server_id)"
                    " VALUES (%s, %s, %s) RETURNING id", (ids["database"], ids["DB1"], ids["DB2"]))
    return [m[0] for m in made]


def tree(root: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(root)): (p.read_bytes(), int(p.stat().st_mtime)) for p in sorted(root.rglob("*"))
            if p.is_file()}


def stages(sql):
    return sql("SELECT id, stage, attempts, last_error FROM hosting_transfers ORDER BY id")


def test_a_transfer_killed_mid_copy_resumes_and_ends_with_one_copy(world, databases):
    from panelflow.hooks.panel_db import PanelDatabaseHook
    from panelflow.steps.hosting.transfers import process_transfer_queue

    sql, ids, source, target = world["sql"], world["ids"], world["source"], world["target"]
    site_order, db_order = order(sql, ids, target)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "plugins"), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen([sys.executable, "-c", CHILD, T0.isoformat()], env=env, cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    try:
        while True:       # until the order's row says copying and some files have landed
            copied = [p for p in target.rglob("*.bin")] if target.exists() else []
            if sql("SELECT stage FROM hosting_transfers WHERE id = %s", (site_order,)) == [("copying_files",)] \
                    and len(copied) >= 5:
                break
            assert child.poll() is None, child.stdout.read().decode()
            assert time.monotonic() < deadline, "the child never reached the middle of the copy"
            time.sleep(0.02)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
    assert child.returncode == -signal.SIGKILL
    assert [s[1] for s in stages(sql)] == ["copying_files", "queued"]
    assert 5 <= len(list(target.rglob("*.bin"))) < 40

    summary = process_transfer_queue(PanelDatabaseHook(), at(T0 + timedelta(minutes=10)))
    assert (summary["transfers"], summary["transfers_done"], summary["transfers_failed"]) == (2, 2, 0)
    assert summary["files_already_there"] >= 4                              # what the killed run sent stays
    assert summary["files_copied"] + summary["files_already_there"] == 41
    assert tree(target) == tree(source)                                     # one copy: same files, no .partial
    assert not list(target.rglob("*.partial"))
    assert rows(databases["DB2"]) == rows(databases["DB1"])
    assert databases["DB2"].execute("SHOW DATABASES LIKE 'shop'") == [("shop",)]
    with databases["DB2"].connect("shopuser", "Sh0p!pass", "shop") as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM orders")                        # the user moved with its password
        assert cur.fetchone() == (300,)
    assert sql("SELECT web_server_id, physical_path FROM hosted_sites") == [(ids["WEB2"], str(target))]
    assert sql("SELECT db_server_id FROM hosted_databases") == [(ids["DB2"],)]
    assert sql("SELECT db_server_id FROM hosted_database_users") == [(ids["DB2"],)]
    done = sql("SELECT stage, started_at, finished_at, stage_times, files_copied, tables_copied"
               " FROM hosting_transfers ORDER BY id")
    assert done[0][:3] == ("done", T0, T0 + timedelta(minutes=10))
    assert set(done[0][3]) == {"copying_files", "switching"} and set(done[1][3]) == {"copying_database", "switching"}
    assert done[1][5] == 2
    assert tree(source)                                                     # the old copy stays for the operator

    again = process_transfer_queue(PanelDatabaseHook(), at(T0 + timedelta(minutes=20)))
    assert again["transfers"] == 0 and tree(target) == tree(source)


def test_a_half_restored_database_is_replaced_not_doubled(world, databases):
    """A run killed during the restore left part of the tables on DB2: the next run's restore
    drops and re-creates each table, so the rows end equal, once."""
    from panelflow.hooks.panel_db import PanelDatabaseHook
    from panelflow.steps.hosting.transfers import process_transfer_queue

    sql, ids = world["sql"], world["ids"]
    (db_order,) = order(sql, ids, world["target"], site=False)
    sql("UPDATE hosting_transfers SET stage = 'copying_database', started_at = %s WHERE id = %s", (T0, db_order))
    db2 = databases["DB2"]
    db2.execute("CREATE DATABASE shop")
    db2.execute("CREATE TABLE shop.orders (id int PRIMARY KEY, customer varchar(100), note text)")
    db2.execute("INSERT INTO shop.orders VALUES (1, 'customer 1 “ü”', 'x'), (2, 'half', '')")
    summary = process_transfer_queue(PanelDatabaseHook(), at(T0 + timedelta(minutes=10)))
    assert summary["transfers_done"] == 1 and summary["tables_copied"] == 2
    assert rows(db2) == rows(databases["DB1"])
    assert stages(sql) == [(db_order, "done", 0, None)]


def test_a_web_server_that_is_down_leaves_the_order_for_the_next_run(world):
    from panelflow.hooks.panel_db import PanelDatabaseHook
    from panelflow.steps.hosting._backend import HostingServersFailed
    from panelflow.steps.hosting.transfers import process_transfer_queue

    sql, ids, source, target = world["sql"], world["ids"], world["source"], world["target"]
    (site_order,) = order(sql, ids, target, database=False)
    world["web"]["WEB2"].stop()
    with pytest.raises(HostingServersFailed):
        process_transfer_queue(PanelDatabaseHook(), at(T0))
    ((_, stage, attempts, error),) = stages(sql)
    assert (stage, attempts) == ("copying_files", 1) and "Unable to connect" in error
    world["web"]["WEB2"].start()
    summary = process_transfer_queue(PanelDatabaseHook(), at(T0 + timedelta(minutes=10)))
    assert summary["transfers_done"] == 1 and tree(target) == tree(source)


def test_an_order_it_cannot_do_is_failed_with_why(world, sql, hosting):
    from panelflow.hooks.panel_db import PanelDatabaseHook
    from panelflow.steps.hosting._backend import HostingServersFailed
    from panelflow.steps.hosting.transfers import process_transfer_queue
    from sandbox.psrp import psrp_connection

    ids = world["ids"]
    mssql = hosting.server("SQL1", "database", "mssql", psrp_connection("sql1.corp.example"))
    sql("INSERT INTO hosting_transfers (database_id, from_server_id, to_server_id) VALUES (%s, %s, %s)",
        (ids["database"], ids["DB1"], mssql))
    with pytest.raises(HostingServersFailed):
        process_transfer_queue(PanelDatabaseHook(), at(T0))
    ((_, stage, attempts, error),) = stages(sql)
    assert stage == "failed" and "only MySQL/MariaDB databases" in error
    assert sql("SELECT db_server_id FROM hosted_databases") == [(ids["DB1"],)]


def test_an_empty_queue_is_a_summary(hosting):
    from panelflow.hooks.panel_db import PanelDatabaseHook
    from panelflow.steps.hosting.transfers import process_transfer_queue

    summary = process_transfer_queue(PanelDatabaseHook(), at(T0))
    assert (summary["transfers"], summary["transfers_done"]) == (0, 0)


def test_orders_past_the_run_budget_wait_for_the_next_run(world):
    from panelflow.hooks.panel_db import PanelDatabaseHook
    from panelflow.steps.hosting.transfers import process_transfer_queue

    sql, ids = world["sql"], world["ids"]
    order(sql, ids, world["target"])
    summary = process_transfer_queue(PanelDatabaseHook(), at(T0), params={"run_budget_seconds": 0})
    assert (summary["transfers"], summary["transfers_deferred"]) == (0, 2)
    assert [s[1:3] for s in stages(sql)] == [("queued", 0), ("queued", 0)]
    assert not world["target"].exists()


def test_a_copy_past_the_run_budget_pauses_between_files_and_the_next_run_goes_on(world, monkeypatch):
    """The budget is read between two files: the test spends it after ten (``_Mover.spent``), not the clock."""
    from panelflow.hooks.panel_db import PanelDatabaseHook
    from panelflow.steps.hosting import transfers

    sql, source, target = world["sql"], world["source"], world["target"]
    (site_order,) = order(sql, world["ids"], target, database=False)
    checks, spent = iter(range(1000)), transfers._Mover.spent
    monkeypatch.setattr(transfers._Mover, "spent", lambda self: next(checks) > 10)
    first = transfers.process_transfer_queue(PanelDatabaseHook(), at(T0))
    assert (first["transfers_paused"], first["transfers_done"], first["files_copied"]) == (1, 0, 10)
    assert stages(sql) == [(site_order, "copying_files", 0, None)]
    assert sql("SELECT files_copied FROM hosting_transfers") == [(10,)]
    monkeypatch.setattr(transfers._Mover, "spent", spent)
    second = transfers.process_transfer_queue(PanelDatabaseHook(), at(T0 + timedelta(minutes=10)))
    assert (second["transfers_done"], second["files_already_there"], second["files_copied"]) == (1, 10, 31)
    assert tree(target) == tree(source)
