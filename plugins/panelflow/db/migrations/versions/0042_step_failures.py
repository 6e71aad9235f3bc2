"""Step failures that last, for the daily digest e-mail ("Automation status").

- ``step_failures``: one row per failed try that ended a task instance — written by the
  task-level failure callback (``panelflow.alerts.ThreadFailureNotifier``) after a step's last try,
  beside its e-mail. Keyed by (dag_id, run_id, task_id, map_index, try_number), so a callback
  that fires twice for the same try adds nothing, while a cleared task that fails again is a
  second failure. Airflow keeps its task instances only as long as its metadata DB keeps runs;
  this table keeps 400 days like ``step_run_counts`` (the same retention step), so the digest and
  a year's history read one table. ``run_day`` follows ``step_run_counts.run_day`` (the day the
  run's data interval ends on, in the thread's time zone): a run's failures and its counts land
  on the same day. ``error`` is the error's last lines, at most 2000 characters.
"""
from alembic import op

revision = "0042"
down_revision = "0041"

DDL = """
CREATE TABLE step_failures (
    dag_id text NOT NULL,
    run_id text NOT NULL,
    task_id text NOT NULL,
    map_index integer NOT NULL DEFAULT -1,            -- -1: not a mapped task instance
    try_number integer NOT NULL,
    thread text NOT NULL,
    step_id text NOT NULL,
    failed_at timestamptz NOT NULL,
    run_day date NOT NULL,                            -- the day the data interval ends on, thread's zone
    error text NOT NULL DEFAULT '' CHECK (char_length(error) <= 2000),
    PRIMARY KEY (dag_id, run_id, task_id, map_index, try_number)
);
CREATE INDEX ix_step_failures_day ON step_failures (run_day, thread);
"""

DROP = """
DROP TABLE step_failures;
"""


def upgrade() -> None:
    op.execute(DDL)


def downgrade() -> None:
    op.execute(DROP)
