"""The panel's own PostgreSQL database (customers, billing, queues, logs).

A Postgres-provider hook with its own default connection id, so every step reaches the panel DB
through the Airflow connection ``panel_db`` (``AIRFLOW_CONN_PANEL_DB`` or a secrets backend)
and no DSN ever sits in code or the catalog.
"""

from __future__ import annotations

from airflow.providers.postgres.hooks.postgres import PostgresHook


class PanelDatabaseHook(PostgresHook):
    conn_name_attr = "postgres_conn_id"
    default_conn_name = "panel_db"
    hook_name = "panelflow panel database"

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("postgres_conn_id", self.default_conn_name)
        super().__init__(*args, **kwargs)


def conninfo_for(conn_id: str = "panel_db") -> str:
    """A libpq conninfo for psycopg's async connection (the daemon trigger), from the connection."""
    from psycopg.conninfo import make_conninfo

    from airflow.sdk import BaseHook

    c = BaseHook.get_connection(conn_id)
    params = {
        "host": c.host or None,
        "port": c.port or None,
        "user": c.login or None,
        "password": c.password or None,
        "dbname": c.schema or None,
    }
    extra = c.extra_dejson
    for key in ("sslmode", "sslrootcert", "sslcert", "sslkey", "connect_timeout", "application_name"):
        if key in extra:
            params[key] = extra[key]
    return make_conninfo("", **{k: v for k, v in params.items() if v is not None})
