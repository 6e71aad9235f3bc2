"""A real, throw-away MariaDB server for the tests: Debian's ``mariadbd`` on 127.0.0.1, own data directory.

Use::

    from harness.mariadb import MariaDB

    with MariaDB(tmp_path) as db:
        monkeypatch.setenv("AIRFLOW_CONN_WEB_MYSQL", db.connection_uri())   # HostedMySqlHook reads it
        db.execute("CREATE DATABASE shop")                                  # as root, over the socket
        rows = db.execute("SELECT user FROM mysql.user WHERE user = %s", ("jo",))

Why a real server: the hosting steps create databases and users, grant, rename and drop them, and
measure sizes from ``information_schema`` — the server's own identifier rules, grant tables and
authentication are what is under test, and no fake keeps them. ``mariadb-install-db`` builds the
data directory (~0.7 s), ``mariadbd`` starts on a free port of 127.0.0.1 only (ready in ~0.3 s) with
``--no-defaults`` first, so nothing of /etc/mysql applies. ``normal`` root authentication leaves
root with an empty password: the harness sets a random one at once, on every root host entry, and
hands it out only through :meth:`connection_uri`. ``--skip-name-resolve`` means TCP logins match
``'user'@'%'`` or ``'user'@'127.0.0.1'``, never ``@'localhost'``.

The server runs in its own session with a parent-death signal, so it goes away with the test even
when pytest is killed; :meth:`stop` ends it by its PID (SIGTERM, bounded wait, then SIGKILL).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
from pathlib import Path

from harness import require_binary
from harness.smb_share import _die_with_parent
from panelflow.dev.postgres import free_port

HOST = "127.0.0.1"


class MariaDB:
    """One ``mariadbd`` with its data, socket, pid and error log in ``workdir``."""

    def __init__(self, workdir: str | Path):
        self.dir = Path(workdir)
        self.datadir = self.dir / "data"
        self.socket = str(self.dir / "mysqld.sock")
        self.root_password = "Pf!" + secrets.token_urlsafe(12)
        self.port: int | None = None
        self.proc: subprocess.Popen | None = None

    # -- lifecycle ------------------------------------------------------------------------------------

    def start(self, timeout: float = 30) -> "MariaDB":
        install = require_binary("mariadb-install-db")
        server = require_binary("mariadbd")
        self.dir.mkdir(parents=True, exist_ok=True)
        user = ["--user=root"] if os.geteuid() == 0 else []
        done = subprocess.run([install, "--no-defaults", *user, f"--datadir={self.datadir}",
                               "--auth-root-authentication-method=normal", "--skip-test-db",
                               "--skip-name-resolve"], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"mariadb-install-db failed: {(done.stderr or done.stdout).strip()[-2000:]}")
        self.port = free_port()
        self.proc = subprocess.Popen(
            [server, "--no-defaults", *user, f"--datadir={self.datadir}", f"--socket={self.socket}",
             f"--pid-file={self.dir / 'mysqld.pid'}", f"--port={self.port}", f"--bind-address={HOST}",
             "--skip-name-resolve", f"--log-error={self.dir / 'err.log'}", "--innodb-buffer-pool-size=16M",
             "--skip-log-bin", "--character-set-server=utf8mb4", "--collation-server=utf8mb4_unicode_ci"],
            cwd=self.dir, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True, preexec_fn=_die_with_parent)
        try:
            self._wait_ready(timeout)
            self._set_root_password()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        import pymysql

        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mariadbd exited ({self.proc.returncode}): {self.error_log()[-2000:]}")
            try:
                pymysql.connect(unix_socket=self.socket, user="root", password="", connect_timeout=1).close()
                return
            except pymysql.err.OperationalError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"mariadbd did not answer on {self.socket} within {timeout} s") from None
                time.sleep(0.05)

    def _set_root_password(self) -> None:
        """Every loopback root entry gets the password; root entries for the machine's own name (which
        ``--skip-name-resolve`` cannot match, and ALTER USER refuses) are dropped: none stays open."""
        import pymysql

        with pymysql.connect(unix_socket=self.socket, user="root", password="", autocommit=True) as conn:
            with conn.cursor() as cur:
                cur.execute("SELECT host FROM mysql.user WHERE user = 'root'")
                for (host,) in cur.fetchall():
                    if host in ("localhost", "127.0.0.1", "::1"):
                        cur.execute("ALTER USER 'root'@%s IDENTIFIED BY %s", (host, self.root_password))
                    else:
                        cur.execute("DROP USER 'root'@%s", (host,))

    def stop(self, timeout: float = 20) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def __enter__(self) -> "MariaDB":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def error_log(self) -> str:
        path = self.dir / "err.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # -- access ---------------------------------------------------------------------------------------

    def connection_uri(self, conn_type: str = "hosted_mysql", **extra) -> str:
        """The value of ``AIRFLOW_CONN_<ID>`` (JSON form): root over TCP on 127.0.0.1, for
        ``HostedMySqlHook`` (``hosted_mysql``) or any hook of ``conn_type`` reading host/port/login/password."""
        return json.dumps({"conn_type": conn_type, "host": HOST, "port": self.port, "login": "root",
                           "password": self.root_password, "extra": extra or {}})

    def connect(self, user: str = "root", password: str | None = None, database: str | None = None):
        """A PyMySQL connection over TCP (how a customer's application logs in)."""
        import pymysql

        return pymysql.connect(host=HOST, port=self.port, user=user,
                               password=self.root_password if password is None else password,
                               database=database, autocommit=True, connect_timeout=5)

    def execute(self, sql: str, params=None) -> list[tuple]:
        """Run one statement as root over the socket (values as PyMySQL ``%s`` parameters) → its rows."""
        import pymysql

        with pymysql.connect(unix_socket=self.socket, user="root", password=self.root_password,
                             autocommit=True) as conn:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                return list(cur.fetchall()) if cur.description else []
