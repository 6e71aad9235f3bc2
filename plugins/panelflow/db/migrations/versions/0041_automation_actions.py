"""The Threads Manager's Automation Status: its audit trail, dismissed failures and emergency stops.

- ``automation_actions``: every change an operator makes from the Automation Status page (retry,
  dismiss, resend, retry charge, emergency stop, resume) with who and when — Airflow's own audit
  log (``action_logging``) records the request, this records what it did to the panel's rows,
  where the panel's operators look.
- ``failed_action_dismissals``: a failed job, charge or message an operator marked handled; the
  failed-actions queue hides it. Keyed by (kind, id) because the three kinds live in three tables.
- ``emergency_stops``: "Stop all automation" — the DAGs it paused (exactly those are unpaused by
  Resume), who pulled it and when, who resumed. At most one stop is active (``resumed_at`` NULL).
- ``group_action_jobs.secrets_removed``: the payload keys the queue removed when the job finished
  (a trigger notices them), so a retry of a job that needed a password can say why it cannot run
  instead of failing at the backend for a missing field.
"""
from alembic import op

revision = "0041"
down_revision = "0040"

DDL = """
CREATE TABLE automation_actions (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT clock_timestamp(),
    username text NOT NULL,
    action text NOT NULL,                             -- retry, dismiss, resend, retry_charge, stop, resume
    target_kind text NOT NULL,                        -- job, charge, message, automation
    target_id text,
    detail jsonb NOT NULL DEFAULT '{}'                -- the row as it was: status, attempts, error …
);
CREATE INDEX ix_automation_actions_target ON automation_actions (target_kind, target_id, at);

CREATE TABLE failed_action_dismissals (
    kind text NOT NULL CHECK (kind IN ('job', 'charge', 'message')),
    target_id bigint NOT NULL,
    dismissed_by text NOT NULL,
    dismissed_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (kind, target_id)
);

CREATE TABLE emergency_stops (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    pulled_by text NOT NULL,
    pulled_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    paused_dag_ids text[] NOT NULL,
    resumed_by text,
    resumed_at timestamptz
);
CREATE UNIQUE INDEX ux_emergency_stops_active ON emergency_stops ((true)) WHERE resumed_at IS NULL;

ALTER TABLE group_action_jobs ADD COLUMN secrets_removed text[] NOT NULL DEFAULT '{}';
CREATE FUNCTION group_action_jobs_note_removed_keys() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.secrets_removed := ARRAY(
        SELECT DISTINCT k FROM (
            SELECT unnest(OLD.secrets_removed) AS k
            UNION SELECT jsonb_object_keys(OLD.payload) AS k
        ) keys
        WHERE NOT NEW.payload ? k);
    RETURN NEW;
END $$;
CREATE TRIGGER group_action_jobs_removed_keys BEFORE UPDATE OF payload ON group_action_jobs
    FOR EACH ROW WHEN (OLD.payload IS DISTINCT FROM NEW.payload)
    EXECUTE FUNCTION group_action_jobs_note_removed_keys();
"""

DROP = """
DROP TRIGGER group_action_jobs_removed_keys ON group_action_jobs;
DROP FUNCTION group_action_jobs_note_removed_keys();
ALTER TABLE group_action_jobs DROP COLUMN secrets_removed;
DROP TABLE emergency_stops;
DROP TABLE failed_action_dismissals;
DROP TABLE automation_actions;
"""


def upgrade() -> None:
    op.execute(DDL)


def downgrade() -> None:
    op.execute(DROP)
