"""The embedded PostgreSQL `make run` and the tests use."""

import psycopg

from panelflow.devdb import EmbeddedPostgres


def test_a_server_left_on_the_data_directory_is_replaced(tmp_path):
    first = EmbeddedPostgres(tmp_path / "pg", durable=False).start()
    try:
        first.create_database("panel")
        second = EmbeddedPostgres(tmp_path / "pg", durable=False).start()  # as after a killed make run
        try:
            assert first.proc.wait(20) == 0  # the old server was shut down, not orphaned
            with psycopg.connect(second.uri("panel")) as conn:  # same data, new server
                assert conn.execute("SELECT 1").fetchone() == (1,)
        finally:
            second.stop()
    finally:
        first.stop()
