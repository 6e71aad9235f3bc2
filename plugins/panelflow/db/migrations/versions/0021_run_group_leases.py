"""Run-group exclusion: leases held by running threads and the FIFO queue of runs waiting for them.

JeraSoft: "If two services have intersecting groups, the system will not run them
simultaneously and will put one of the services in queue". Airflow pools bound tasks, not runs,
so :mod:`panelflow.run_groups` keeps the run-level exclusion here, in the panel DB (task code
in Airflow 3 may not touch the metadata DB):

- ``run_group_leases`` — one row per run group currently held: the holding DAG run
  (``dag_id``, ``run_id``), when it started waiting and when it acquired, and ``expires_at``,
  pushed forward by every task of the holding run as it starts (the heartbeat). No row: free.
  A run holds all of its groups or none (the rows are written in one transaction).
- ``run_group_waiters`` — runs "in queue": their groups, their place in the queue
  (``position``, first come first served), and ``seen_at``, refreshed by the waiting trigger on
  every poll so a waiter nobody polls any more stops blocking the queue.

Times are the database's clock (``clock_timestamp()``): infrastructure time, not a step's
business clock.
"""
from alembic import op

revision = "0021"
down_revision = "0020"

DDL = """
CREATE TABLE run_group_leases (
    run_group text PRIMARY KEY,
    dag_id text NOT NULL,
    run_id text NOT NULL,
    waited_since timestamptz NOT NULL,
    acquired_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    heartbeat_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    expires_at timestamptz NOT NULL,
    CHECK (expires_at > heartbeat_at)
);
CREATE INDEX run_group_leases_holder ON run_group_leases (dag_id, run_id);

CREATE TABLE run_group_waiters (
    dag_id text NOT NULL,
    run_id text NOT NULL,
    run_groups text[] NOT NULL CHECK (cardinality(run_groups) > 0),
    position bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    queued_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    seen_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (dag_id, run_id)
);
CREATE INDEX run_group_waiters_groups ON run_group_waiters USING gin (run_groups);
"""


def upgrade() -> None:
    op.execute(DDL)


def downgrade() -> None:
    op.execute("DROP TABLE run_group_waiters; DROP TABLE run_group_leases;")
