"""The embedded PostgreSQL `make run` and the tests use."""

import subprocess
import time

import psutil
import psycopg
import pytest

from panelflow.dev.postgres import EmbeddedPostgres, _bin


def test_an_orphaned_server_on_the_data_directory_is_replaced(tmp_path):
    """As after a make run killed so hard that its server outlived it: the next start stops it."""
    first = EmbeddedPostgres(tmp_path / "pg", durable=False).start()
    first.create_database("panel")
    first.stop()
    # start a server whose starter (a shell) then dies without stopping it
    shell = subprocess.Popen(
        ["bash", "-c", f"{_bin('postgres')} -D {first.datadir} -h 127.0.0.1 -p {first.port} -k {first.datadir}"
                       " >/dev/null 2>&1 & echo $!; sleep 300"],
        stdout=subprocess.PIPE, text=True, user=first.user, start_new_session=True)
    orphan = psutil.Process(int(shell.stdout.readline()))
    time.sleep(1)
    shell.kill()
    shell.wait()
    deadline = time.monotonic() + 10
    while orphan.ppid() not in (0, 1) and time.monotonic() < deadline:
        time.sleep(0.1)
    second = EmbeddedPostgres(tmp_path / "pg", durable=False).start()
    try:
        assert not orphan.is_running() or orphan.status() == psutil.STATUS_ZOMBIE
        with psycopg.connect(second.uri("panel")) as conn:  # same data, new server
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        second.stop()


def test_a_server_someone_still_runs_is_not_stopped(tmp_path):
    first = EmbeddedPostgres(tmp_path / "pg", durable=False).start()
    try:
        with pytest.raises(RuntimeError, match="is in use by a PostgreSQL server"):
            EmbeddedPostgres(tmp_path / "pg", durable=False).start()
        assert first.proc.poll() is None  # untouched
    finally:
        first.stop()
