"""An embedded PostgreSQL for ``make run`` and the tests (the ``pgserver`` wheel's binaries).

pgserver's own ``get_server`` listens only on a Unix socket and stops the server when the
Python process that started it exits; here the server is a child we own, listening on
127.0.0.1 on a port of our choosing, so every Airflow component and test reaches it by an
ordinary ``postgresql://`` URI and ``make run`` stops it with the rest. As root, PostgreSQL runs
as the unprivileged ``pgserver`` user, as pgserver itself does.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

USER = "postgres"


def _bin(name: str) -> str:
    from pgserver._commands import POSTGRES_BIN_PATH

    return str(POSTGRES_BIN_PATH / name)


def _system_user() -> str | None:
    if os.geteuid() != 0:
        return None
    from pgserver._commands import POSTGRES_BIN_PATH
    from pgserver.utils import ensure_folder_permissions, ensure_prefix_permissions, ensure_user_exists

    ensure_user_exists("pgserver")
    ensure_prefix_permissions(POSTGRES_BIN_PATH)
    ensure_folder_permissions(POSTGRES_BIN_PATH, 0o055)
    ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", 0o044)
    return "pgserver"


try:
    _LIBC = ctypes.CDLL("libc.so.6", use_errno=True)
except OSError:  # not glibc Linux
    _LIBC = None


def die_with_parent(sig: int = signal.SIGINT):
    """A ``preexec_fn``: the child gets ``sig`` if whoever started it dies without stopping it
    (SIGKILL, OOM). Imports nothing: it runs in the forked child."""

    def arm() -> None:
        if _LIBC is not None:
            _LIBC.prctl(1, sig)  # PR_SET_PDEATHSIG

    return arm


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EmbeddedPostgres:
    """``start()`` → a running server at ``uri(db)``; ``stop()`` ends it (fast shutdown)."""

    def __init__(self, datadir: Path | str, port: int | None = None, durable: bool = True):
        self.datadir = Path(datadir).resolve()
        self.port = port or free_port()
        self.durable = durable
        self.proc: subprocess.Popen | None = None
        self.user = _system_user()

    def uri(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def _chown(self, path: Path) -> None:
        if self.user:
            shutil.chown(path, self.user, self.user)

    def init(self) -> None:
        if (self.datadir / "PG_VERSION").exists():
            return
        self.datadir.mkdir(parents=True, exist_ok=True)
        if self.user:
            from pgserver.utils import ensure_prefix_permissions

            ensure_prefix_permissions(self.datadir)
        self._chown(self.datadir)
        subprocess.run(
            [_bin("initdb"), "-D", str(self.datadir), "-U", USER, "--auth=trust", "--encoding=UTF8", "--no-sync"],
            check=True, capture_output=True, user=self.user,
        )

    def _stop_stale(self, timeout: float = 20) -> None:
        """A server left running on this data directory by a run that was killed: stop it.

        Only an orphan (its starter is gone) is stopped; a server whose starter still runs is
        someone else's, and starting over it is refused.
        """
        import psutil

        pidfile = self.datadir / "postmaster.pid"
        try:
            server = psutil.Process(int(pidfile.read_text().split()[0]))
            if "postgres" not in server.name():
                return  # the pid was reused: the file is stale, postgres replaces it
            owner = server.ppid()
            if owner not in (0, 1) and psutil.pid_exists(owner):
                # started by a process that is still alive (another make run, a test): not ours to stop
                raise RuntimeError(f"{self.datadir} is in use by a PostgreSQL server (pid {server.pid}) "
                                   f"that process {owner} started and still runs")
            server.send_signal(signal.SIGINT)
            server.wait(timeout)
        except (FileNotFoundError, ValueError, IndexError, psutil.NoSuchProcess):
            return
        except psutil.TimeoutExpired:
            raise RuntimeError(f"a PostgreSQL server (pid {server.pid}) still holds {self.datadir}") from None

    def start(self, timeout: float = 30) -> "EmbeddedPostgres":
        self.init()
        if self.user:  # again at every (re)start: a pytest session elsewhere re-closes /tmp/pytest-of-root
            from pgserver.utils import ensure_prefix_permissions

            ensure_prefix_permissions(self.datadir)
        self._stop_stale()
        args = [_bin("postgres"), "-D", str(self.datadir), "-h", "127.0.0.1", "-p", str(self.port),
                "-k", str(self.datadir), "-c", "max_connections=200"]
        if not self.durable:  # tests: no fsync, nothing to recover
            args += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        log = open(self.datadir / "server.log", "ab")
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, user=self.user,
                                     preexec_fn=die_with_parent(signal.SIGINT))  # SIGINT: fast shutdown
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited ({self.proc.returncode}); see {self.datadir / 'server.log'}")
            ready = subprocess.run([_bin("pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-U", USER],
                                   capture_output=True)
            if ready.returncode == 0:
                return self
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"postgres did not accept connections within {timeout}s")

    def create_database(self, name: str) -> None:
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.uri(), autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
            if not exists:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))

    def stop(self, timeout: float = 20) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # fast shutdown
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
