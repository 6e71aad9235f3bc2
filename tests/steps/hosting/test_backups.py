"""TransferWork 2 and 3 against real servers: a MariaDB 10.11 (``mariadbd``) holding a customer's
database, OpenSSH ``sshd`` backup servers on 127.0.0.1 (host keys pinned in the connections), and
SQL Server at the PSRP boundary (no Windows here: the T-SQL BACKUP script has not run on a real
SQL Server)."""

from __future__ import annotations

import gzip
import hashlib
import json
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
from harness.sftp_server import SftpServer, make_key
from panelflow.step import Interval

T0 = datetime(2026, 3, 2, 2, 0, tzinfo=timezone.utc)
MY_TABLES = ("database_backups", "backup_targets")   # the hosting fixture's TRUNCATE … CASCADE reaches them too
ROWS = [(1, "Ann's “shop”", b"\x00\xffbin", None), (2, "Bob; DROP TABLE orders; --", b"", "2026-01-31 10:00:00"),
        (3, "Zoë", None, "2026-02-01 00:00:00")]


def at(end, minutes=10):
    return Interval(end - timedelta(minutes=minutes), end)


@pytest.fixture(scope="module")
def mariadb(tmp_path_factory):
    """One MariaDB for the module, with the customer's database ``shop`` (a table, a view, a trigger)."""
    with MariaDB(tmp_path_factory.mktemp("mariadb")) as db:
        db.execute("CREATE DATABASE shop CHARACTER SET utf8mb4")
        db.execute("CREATE TABLE shop.orders (id int PRIMARY KEY, customer varchar(100), blob_col varbinary(20),"
                   " placed_at datetime NULL)")
        db.execute("CREATE TABLE shop.audit (n int AUTO_INCREMENT PRIMARY KEY, order_id int)")
        with db.connect(database="shop") as conn, conn.cursor() as cur:   # as a customer writes it: unqualified
            cur.execute("CREATE TRIGGER order_audit AFTER INSERT ON orders FOR EACH ROW"
                        " INSERT INTO audit (order_id) VALUES (NEW.id)")
        for row in ROWS:
            db.execute("INSERT INTO shop.orders VALUES (%s, %s, %s, %s)", row)
        with db.connect(database="shop") as conn, conn.cursor() as cur:
            cur.execute("CREATE VIEW big_orders AS SELECT id, customer FROM orders WHERE id > 1")
        yield db


@pytest.fixture
def world(hosting, sql, mariadb, tmp_path, monkeypatch):
    """The panel: a MariaDB server with database ``shop`` and two backup servers (sshd), wired as connections."""
    sql("TRUNCATE " + ", ".join(MY_TABLES) + " RESTART IDENTITY CASCADE")
    subscription = hosting.subscriptions[0]
    server = hosting.server("DB1", "database", "mysql", mariadb.connection_uri())     # connection db1
    (database,), = sql("INSERT INTO hosted_databases (subscription_id, db_server_id, name) VALUES (%s, %s, 'shop')"
                       " RETURNING id", (subscription, server))
    servers = {}
    for name in ("backup1", "backup2"):
        srv = SftpServer(tmp_path / name).start()
        servers[name] = srv
        monkeypatch.setenv(f"AIRFLOW_CONN_{name.upper()}", srv.connection())
        sql("INSERT INTO backup_targets (name, sftp_conn_id, remote_folder) VALUES (%s, %s, %s)",
            (name, name, str(srv.root / "dbs")))
    yield {"server": server, "database": database, "subscription": subscription, "sftp": servers, "sql": sql,
           "hosting": hosting}
    for srv in servers.values():
        srv.stop()


def backups(sql):
    return sql("SELECT t.name, b.taken_for, b.remote_path, b.size_bytes, b.sha256, b.status, b.last_error"
               " FROM database_backups b JOIN backup_targets t ON t.id = b.target_id ORDER BY b.id")


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def restore_rows(mariadb, dump_gz: Path, database: str, tmp_path: Path):
    """Restore a backup into another database with the real ``mariadb`` client; its rows, per table."""
    from panelflow.steps.hosting.backups import client_options, restore_database

    plain = tmp_path / f"{database}.sql"
    plain.write_bytes(gzip.decompress(dump_gz.read_bytes()))
    mariadb.execute(f"CREATE DATABASE {database}")
    options_dir = tmp_path / "opts"
    options_dir.mkdir(mode=0o700, exist_ok=True)
    restore_database(client_options("db1", options_dir), database, plain)
    return table_rows(mariadb, database)


def table_rows(mariadb, database):
    return {t: mariadb.execute(f"SELECT * FROM {database}.{t} ORDER BY 1") for t in ("orders", "audit", "big_orders")}


def test_a_backup_is_dumped_sent_to_every_backup_server_and_restores_equal(world, mariadb, tmp_path):
    from panelflow.hooks.panel_db import PanelDatabaseHook
    from panelflow.steps.hosting.backups import backup_hostmatic_databases

    sql = world["sql"]
    summary = backup_hostmatic_databases(PanelDatabaseHook(), at(T0))
    assert (summary["backups_due"], summary["backups_sent"], summary["backups_failed"]) == (2, 2, 0)
    rows = backups(sql)
    assert [(r[0], r[1], r[5]) for r in rows] == [("backup1", T0, "sent"), ("backup2", T0, "sent")]
    for name, _, path, size, sha, _, _ in rows:
        root = world["sftp"][name].root
        assert path == f"{root}/dbs/DB1/{world['database']}-shop/shop-20260302T020000Z.sql.gz"
        assert files_under(root) == [f"dbs/DB1/{world['database']}-shop/shop-20260302T020000Z.sql.gz"]  # no .partial
        data = Path(path).read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (size, sha)
    assert os.stat(rows[0][2]).st_size == rows[0][3]

    # restorable: into a second database, every table (and the view) equal to the original
    assert restore_rows(mariadb, Path(rows[0][2]), "shop_restored", tmp_path) == table_rows(mariadb, "shop")
    assert [r[1] for r in mariadb.execute("SELECT * FROM shop_restored.orders ORDER BY id")] == [r[1] for r in ROWS]
    # the trigger came along
    mariadb.execute("INSERT INTO shop_restored.orders (id, customer) VALUES (9, 'new')")
    assert mariadb.execute("SELECT order_id FROM shop_restored.audit WHERE order_id = 9") == [(9,)]
    mariadb.execute("DROP DATABASE shop_restored")

    # a rerun of the same interval sends nothing; the next run (10 minutes later) finds it not due
    before = {r[2]: os.stat(r[2]).st_mtime_ns for r in rows}
    again = backup_hostmatic_databases(PanelDatabaseHook(), at(T0))
    later = backup_hostmatic_databases(PanelDatabaseHook(), at(T0 + timedelta(minutes=10)))
    assert again["backups_due"] == later["backups_due"] == 0
    assert {r[2]: os.stat(r[2]).st_mtime_ns for r in rows} == before
    assert len(backups(sql)) == 2
    # a day of data interval later: the next backup
    nxt = backup_hostmatic_databases(PanelDatabaseHook(), at(T0 + timedelta(hours=24)))
    assert nxt["backups_sent"] == 2 and len(backups(sql)) == 4


def test_a_backup_server_that_is_down_fails_alone_and_gets_its_backup_next_run(world):
    from panelflow.hooks.panel_db import PanelDatabaseHook
    from panelflow.steps.hosting.backups import backup_hostmatic_databases

    sql = world["sql"]
    world["sftp"]["backup2"].stop()
    summary = backup_hostmatic_databases(PanelDatabaseHook(), at(T0))
    assert (summary["backups_sent"], summary["backups_failed"]) == (1, 1)
    assert "backup server backup2" in summary["skipped_examples"][0]
    status = {r[0]: (r[5], r[6]) for r in backups(sql)}
    assert status["backup1"] == ("sent", None)
    assert status["backup2"][0] == "pending" and "Unable to connect" in status["backup2"][1]

    world["sftp"]["backup2"].start()
    retry = backup_hostmatic_databases(PanelDatabaseHook(), at(T0 + timedelta(minutes=10)))
    assert (retry["backups_due"], retry["backups_sent"]) == (1, 1)
    rows = backups(sql)
    assert [(r[0], r[1], r[5]) for r in rows] == [("backup1", T0, "sent"), ("backup2", T0, "sent")]
    data = Path(rows[1][2]).read_bytes()
    assert (len(data), hashlib.sha256(data).hexdigest()) == (rows[1][3], rows[1][4])


def test_a_backup_server_with_another_host_key_is_refused(world, monkeypatch, tmp_path):
    from panelflow.hooks.panel_db import PanelDatabaseHook
    from panelflow.steps.hosting.backups import BackupsFailed, backup_hostmatic_databases

    for name, srv in world["sftp"].items():   # both connections pin a key neither server has
        monkeypatch.setenv(f"AIRFLOW_CONN_{name.upper()}", srv.connection(host_key=make_key(tmp_path / f"k{name}")))
    with pytest.raises(BackupsFailed):
        backup_hostmatic_databases(PanelDatabaseHook(), at(T0))
    assert {r[5] for r in backups(world["sql"])} == {"pending"}
    assert all("Host key for server" in r[6] for r in backups(world["sql"]))
    assert all(files_under(srv.root) == [] for srv in world["sftp"].values())


@pytest.mark.parametrize("loose", [{"no_host_key_check": "true"}, {"allow_host_key_change": "true"}])
def test_a_connection_that_would_accept_any_host_key_is_refused(world, monkeypatch, loose):
    from panelflow.hooks.sftp_files import SftpFiles, SftpUnsafeConnection

    conn = json.loads(world["sftp"]["backup1"].connection())
    del conn["extra"]["host_key"]
    conn["extra"].update(loose)
    monkeypatch.setenv("AIRFLOW_CONN_LOOSE", json.dumps(conn))
    with pytest.raises(SftpUnsafeConnection):
        SftpFiles("loose")


def test_old_backups_are_deleted_after_90_days_of_data_interval_never_before(world):
    from panelflow.hooks.panel_db import PanelDatabaseHook
    from panelflow.steps.hosting.backups import backup_hostmatic_databases, delete_old_backups

    sql = world["sql"]
    backup_hostmatic_databases(PanelDatabaseHook(), at(T0))
    backup_hostmatic_databases(PanelDatabaseHook(), at(T0 + timedelta(days=1)))
    rows = backups(sql)
    folder = Path(rows[0][2]).parent
    (folder / "operator-notes.txt").write_text("not the panel's")         # never recorded: never deleted
    (folder / (Path(rows[0][2]).name + ".partial")).write_bytes(b"leftover")  # the recorded name's leftover

    day90 = T0 + timedelta(days=90)
    early = delete_old_backups(PanelDatabaseHook(), at(day90 - timedelta(minutes=10)))
    assert early["backups_expired"] == 0
    assert early_files(rows) == [True, True, True, True]
    exact = delete_old_backups(PanelDatabaseHook(), at(day90))          # 90 days exactly: not older than 90
    assert exact["backups_expired"] == 0

    done = delete_old_backups(PanelDatabaseHook(), at(day90 + timedelta(minutes=10)), params={"delete_batch": 1})
    assert (done["backups_expired"], done["files_deleted"]) == (1, 1)     # bounded: one per run
    done = delete_old_backups(PanelDatabaseHook(), at(day90 + timedelta(minutes=20)))
    assert (done["backups_expired"], done["files_deleted"]) == (1, 1)
    assert early_files(rows) == [False, False, True, True]                # the next day's backups stay
    assert sorted(p.name for p in folder.iterdir()) == ["operator-notes.txt", Path(rows[2][2]).name]
    assert [(r[5]) for r in backups(sql)] == ["deleted", "deleted", "sent", "sent"]
    assert sql("SELECT deleted_at FROM database_backups WHERE status = 'deleted' ORDER BY id") == \
        [(day90 + timedelta(minutes=10),), (day90 + timedelta(minutes=20),)]      # the runs' clocks

    # a file an operator already removed counts as deleted (missing), and nothing else is touched
    Path(rows[2][2]).unlink()
    last = delete_old_backups(PanelDatabaseHook(), at(day90 + timedelta(days=1, minutes=10)))
    assert (last["backups_expired"], last["files_deleted"], last["files_missing"]) == (2, 1, 1)
    assert sorted(p.name for p in folder.iterdir()) == ["operator-notes.txt"]


def early_files(rows):
    return [Path(r[2]).exists() for r in rows]


def test_nothing_configured_is_a_summary_not_a_failure(hosting):
    from panelflow.hooks.panel_db import PanelDatabaseHook
    from panelflow.steps.hosting.backups import backup_hostmatic_databases, delete_old_backups

    assert backup_hostmatic_databases(PanelDatabaseHook(), at(T0))["backups_due"] == 0
    assert delete_old_backups(PanelDatabaseHook(), at(T0))["backups_expired"] == 0


def test_sql_server_backup_runs_backup_database_over_powershell_and_is_fetched_over_sftp(
        world, recorded_powershell, monkeypatch, tmp_path):
    """The SQL Server at the PSRP boundary: BACKUP DATABASE is asked for with the name and path as
    parameters; what the server would have written is put in its staging folder (its sshd), fetched,
    checked against the server's SHA-256, sent to the backup servers and removed from the staging folder."""
    from panelflow.hooks.panel_db import PanelDatabaseHook
    from panelflow.steps.hosting.backups import backup_hostmatic_databases

    sql = world["sql"]
    name = "crm'; DROP DATABASE master; --"
    staging = SftpServer(tmp_path / "sql1").start()
    try:
        monkeypatch.setenv("AIRFLOW_CONN_SQL1_FILES", staging.connection())
        sql("UPDATE hosted_databases SET status = 'suspended'")    # only the SQL Server database this time
        server = world["hosting"].server("SQL1", "database", "mssql",
                                         recorded_powershell.connection("sql1.corp.example", auth="ntlm"))
        sql("UPDATE hosting_servers SET sftp_conn_id = 'sql1_files' WHERE id = %s", (server,))
        (db_id,), = sql("INSERT INTO hosted_databases (subscription_id, db_server_id, name) VALUES (%s, %s, %s)"
                        " RETURNING id", (world["subscription"], server, name))
        content = os.urandom(70_000)   # stands for the compressed .bak file SQL Server writes

        def backup(cmd):
            (staging.root / cmd.parameters["FileName"]).write_bytes(content)
            return [{"Path": cmd.parameters["Folder"] + "\\" + cmd.parameters["FileName"], "Size": len(content),
                     "Sha256": hashlib.sha256(content).hexdigest().upper()}]

        recorded_powershell.answer("mssql_backup/backup_database", backup)
        summary = backup_hostmatic_databases(PanelDatabaseHook(), at(T0),
                                             params={"mssql_staging_sftp_folder": str(staging.root)})
        assert (summary["backups_sent"], summary["backups_failed"]) == (2, 0)
        (call,) = recorded_powershell.calls("mssql_backup/backup_database")   # one BACKUP for two targets
        assert call.is_script and call.conn_host == "sql1.corp.example"
        assert call.parameters["Database"] == name and name not in call.command
        assert call.parameters["Folder"] == r"D:\Backups\panelflow"
        assert call.parameters["FileName"] == "crm_DROP_DATABASE_master_---20260302T020000Z.bak"
        assert "BACKUP DATABASE @db TO DISK = @path" in call.command
        assert list(staging.root.iterdir()) == []                              # staging file removed
        for r in backups(sql):
            assert r[5] == "sent" and Path(r[2]).read_bytes() == content and r[2].endswith(".bak")
            assert f"/SQL1/{db_id}-" in r[2]
    finally:
        staging.stop()


def test_credentials_never_reach_the_command_line(world, monkeypatch):
    """mariadb-dump gets its password from a 0600 option file in a private temp dir, gone afterwards."""
    from panelflow.hooks.panel_db import PanelDatabaseHook
    from panelflow.steps.hosting import backups as module

    seen = []
    real = subprocess.Popen

    def spy(args, *a, **kw):
        option = next(x for x in args if x.startswith("--defaults-extra-file="))
        path = Path(option.split("=", 1)[1])
        seen.append((list(args), oct(path.stat().st_mode & 0o777), oct(path.parent.stat().st_mode & 0o777),
                     path.read_text(), path))
        return real(args, *a, **kw)

    monkeypatch.setattr(module.subprocess, "Popen", spy)
    module.backup_hostmatic_databases(PanelDatabaseHook(), at(T0))
    (args, mode, dir_mode, text, path), = seen
    password = json.loads(os.environ["AIRFLOW_CONN_DB1"])["password"]
    assert password not in " ".join(args) and password in text
    assert (mode, dir_mode) == ("0o600", "0o700")
    assert not path.exists()


def test_a_server_whose_host_key_is_unknown_is_refused(world, monkeypatch):
    """No ``host_key`` extra and not in the worker's known_hosts: paramiko's RejectPolicy refuses it."""
    import paramiko

    from panelflow.hooks.sftp_files import SftpFiles

    conn = json.loads(world["sftp"]["backup1"].connection())
    del conn["extra"]["host_key"]
    monkeypatch.setenv("AIRFLOW_CONN_UNKNOWN", json.dumps(conn))
    monkeypatch.setenv("HOME", str(world["sftp"]["backup1"].dir))       # a known_hosts-free home
    with pytest.raises(paramiko.SSHException, match="not found in known_hosts"):
        with SftpFiles("unknown"):
            pass


KILLED_UPLOAD = """
import sys, time
from datetime import datetime, timedelta
import paramiko
import panelflow.hooks.sftp_files as sftp_files
sftp_files.CHUNK = 512                    # the test's brake: small writes, each one slow
real = paramiko.sftp_file.SFTPFile.write
def slow(self, data):
    time.sleep(0.05)
    return real(self, data)
paramiko.sftp_file.SFTPFile.write = slow
from panelflow.hooks.panel_db import PanelDatabaseHook
from panelflow.step import Interval
from panelflow.steps.hosting.backups import backup_hostmatic_databases
end = datetime.fromisoformat(sys.argv[1])
backup_hostmatic_databases(PanelDatabaseHook(), Interval(end - timedelta(minutes=10), end))
"""


def test_a_worker_killed_mid_upload_leaves_no_complete_looking_file_and_the_rerun_sends_one(world, mariadb, tmp_path):
    from panelflow.hooks.panel_db import PanelDatabaseHook
    from panelflow.steps.hosting.backups import backup_hostmatic_databases

    sql = world["sql"]
    folder = world["sftp"]["backup1"].root / "dbs"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "plugins"), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen([sys.executable, "-c", KILLED_UPLOAD, T0.isoformat()], env=env, cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    try:
        while not (folder.exists() and list(folder.rglob("*.partial"))):     # in the middle of the upload
            assert child.poll() is None, child.stdout.read().decode()
            assert time.monotonic() < deadline, "the child never started the upload"
            time.sleep(0.02)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
    assert [p.name.endswith(".sql.gz.partial") for p in folder.rglob("*") if p.is_file()] == [True]
    assert {r[5] for r in backups(sql)} == {"pending"}                       # recorded before it was sent

    summary = backup_hostmatic_databases(PanelDatabaseHook(), at(T0))           # the retry of the same run
    assert summary["backups_sent"] == 2
    rows = backups(sql)
    assert [(r[0], r[1], r[5]) for r in rows] == [("backup1", T0, "sent"), ("backup2", T0, "sent")]
    root = world["sftp"]["backup1"].root
    assert files_under(root) == [str(Path(rows[0][2]).relative_to(root))]      # one file, no .partial
    assert restore_rows(mariadb, Path(rows[0][2]), "shop_after_kill", tmp_path) == table_rows(mariadb, "shop")
    mariadb.execute("DROP DATABASE shop_after_kill")
