"""The panel database: Alembic migrations and the command that applies them.

``python -m panelflow.db upgrade [URL]`` migrates the database named by URL, or by the Airflow
connection ``panel_db`` when no URL is given.
"""

from __future__ import annotations

from pathlib import Path

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(url: str):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", sqlalchemy_url(url).replace("%", "%%"))
    return cfg


def sqlalchemy_url(url: str) -> str:
    """Any postgres URI → the psycopg 3 SQLAlchemy dialect."""
    for prefix in ("postgresql+psycopg://", "postgresql+psycopg2://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    raise ValueError("the panel database must be PostgreSQL (postgresql://…)")


def upgrade(url: str, revision: str = "head") -> None:
    from alembic import command

    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    from alembic import command

    command.downgrade(alembic_config(url), revision)


def url_from_connection(conn_id: str = "panel_db") -> str:
    from airflow.sdk import BaseHook

    return BaseHook.get_connection(conn_id).get_uri()
