"""Run counts that last, and the deadline misses the health badge reads ("Automation status").

- ``step_run_counts``: each step's summary (its numeric counts, skipped reasons, a few item names)
  as the StepOperator recorded it, one row per task instance — keyed by (dag_id, run_id, task_id,
  map_index), so a retry or a cleared task overwrites its row instead of adding one. Airflow keeps
  XComs only as long as its metadata DB keeps runs; this table keeps 400 days (HousekeepingWork's
  retention), so a year of history is always there. ``run_day`` is the day the run's data interval
  ends on, in the thread's time zone: the Threads Manager's daily totals group by it.
- ``deadline_misses``: one row per run that was not finished by its thread's catalog deadline
  (``deadline: {after_run_at_minutes: N}``), written by the deadline callback in the transaction
  that queues its one alert e-mail; the Threads Manager turns the thread's health badge red.
"""
from alembic import op

revision = "0040"
down_revision = "0039"

DDL = """
CREATE TABLE step_run_counts (
    dag_id text NOT NULL,
    run_id text NOT NULL,
    task_id text NOT NULL,
    map_index integer NOT NULL DEFAULT -1,            -- -1: not a mapped task instance
    thread text NOT NULL,
    step_id text NOT NULL,
    run_day date NOT NULL,                            -- the day the data interval ends on, thread's zone
    try_number integer NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    counts jsonb NOT NULL,                            -- {"key": number}: the summary's numeric entries
    skipped jsonb NOT NULL DEFAULT '{}',              -- {"reason": count}, bounded
    examples jsonb NOT NULL DEFAULT '[]',             -- skipped/failed item names, at most 20
    PRIMARY KEY (dag_id, run_id, task_id, map_index)
);
CREATE INDEX ix_step_run_counts_day ON step_run_counts (run_day, thread);

CREATE TABLE deadline_misses (
    dag_id text NOT NULL,
    run_id text NOT NULL,
    thread text NOT NULL,
    deadline_at timestamptz NOT NULL,                 -- when the run should have been finished
    noticed_at timestamptz NOT NULL DEFAULT now(),    -- when the miss was seen (and its e-mail queued)
    PRIMARY KEY (dag_id, run_id)
);
CREATE INDEX ix_deadline_misses_thread ON deadline_misses (thread, deadline_at);
"""

DROP = """
DROP TABLE deadline_misses;
DROP TABLE step_run_counts;
"""


def upgrade() -> None:
    op.execute(DDL)


def downgrade() -> None:
    op.execute(DROP)
