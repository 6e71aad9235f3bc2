"""Pieces of DDL that several migrations share, written once.

Migrations are history: replaying them on an empty database must build, to the bit, the schema
the deployed databases got when each one first ran. A helper here is therefore frozen the day a
migration uses it — a new need is a new helper (or a new argument with the old default), never an
edit of what an existing one returns. ``tests/db`` replays every migration up and down again.

Two styles meet here, because the migrations use both: SQLAlchemy columns for the early
``op.create_table`` migrations, SQL text for the later ones written as one DDL script each.
"""

from __future__ import annotations

from collections.abc import Iterable

import sqlalchemy as sa
from alembic import op

TS = sa.DateTime(timezone=True)


def identity() -> sa.Column:
    """``id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY``: a new Column per table (a Column joins one table)."""
    return sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True)


def required(name: str, type_, *constraints: sa.SchemaItem, default=None, **kw) -> sa.Column:
    """A NOT NULL column; ``default`` is its server default (a literal string or ``sa.func.now()``)."""
    return sa.Column(name, type_, *constraints, nullable=False, server_default=default, **kw)


def quoted(values: Iterable[str]) -> str:
    return ", ".join(f"'{v}'" for v in values)


def is_one_of(column: str, values: Iterable[str]) -> str:
    return f"{column} IN ({quoted(values)})"


def one_of(table: str, column: str, values: Iterable[str]) -> sa.CheckConstraint:
    """``CONSTRAINT ck_<table>_<column> CHECK (<column> IN (…))``: named, so a later migration can replace it."""
    return sa.CheckConstraint(is_one_of(column, values), name=f"ck_{table}_{column}")


def table_with_time_index(name: str, time_column: str, *columns: sa.SchemaItem) -> None:
    """A table numbered by ``identity()`` whose retention deletes by one time column, and that column's index."""
    op.create_table(name, identity(), *columns)
    op.create_index(f"ix_{name}_{time_column}", name, [time_column])


# --- SQL text -------------------------------------------------------------------------------------

def conn_id_check(column: str) -> str:
    """The connection ids Airflow accepts (ASCII only), so a row can never name one that cannot exist."""
    return rf"CHECK ({column} ~ '^[A-Za-z0-9_.-]{{1,250}}$')"


def positive(*columns: str, type_: str = "integer") -> str:
    """Counts read from a machine (sockets, cores, bytes): unknown is NULL, never 0."""
    return ", ".join(f"{c} {type_} CHECK ({c} > 0)" for c in columns)


# A threshold alert's episode, one row from the run that finds the value over its threshold to the
# run that finds it back under.
ALERT_EPISODE = """opened_at timestamptz NOT NULL,                   -- the run that found it over
    last_seen_at timestamptz NOT NULL,                -- the last run that found it still over
    cleared_at timestamptz,                           -- the run that found it under again
    outbox_key text,                                  -- the customer's e-mail (NULL: none sent, e.g. no usable address)
    CHECK (cleared_at IS NULL OR cleared_at > opened_at)"""


def alert_episode_indexes(table: str, key: str) -> str:
    """At most one open episode per ``key``, so a second run opening it adds nothing (``ON CONFLICT DO
    NOTHING``); and a key's episodes by time."""
    return (f"CREATE UNIQUE INDEX ux_{table}_open ON {table} ({key}) WHERE cleared_at IS NULL;\n"
            f"CREATE INDEX ix_{table}_key ON {table} ({key}, opened_at);")
