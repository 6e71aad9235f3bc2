"""Scheduled enterprise reports, resource quotas and their over-use, voice bundle over-use notices (UsageReportScheduleWork, QuotaOverUsedWork, OverusageResourceNotification).

Exactly-once lives in the keys, as in 0006: a report is sent once per schedule and period
(``sent_reports``), an over-use episode is open at most once per subscription and resource at a
time (a partial unique index), a voice bundle notice is sent once per bundle, month and
threshold (``voice_bundle_notices``). The steps write with ``ON CONFLICT DO NOTHING``.

A report schedule's ``next_run_on`` is the day its next report is due, and also the exclusive
end of the period that report covers (the day, week or calendar month before it; monthly
schedules therefore run on the 1st). After sending, it moves on by one period from the period,
never from the clock, so a late or missed run sends the missed periods and drifts nothing.

The "verify quota usage again" bit is a table, ``subscription_quota_rechecks`` (a row = the bit
set), not a column of ``subscriptions``: BillingWork's nightly statement keeps every due
subscription row locked for its whole transaction and relies on its updates staying HOT
(``fillfactor = 50``, 0006). A flag column written every 30 minutes would wait on those locks
during the billing run, and an index to find the flagged rows would make its updates touch
every index of the table. A narrow table keyed by subscription is its own index of the flagged
subscriptions, setting and clearing are an insert and a delete, and who set it (``reason``)
is kept, so QuotaOverUsedWork clears only the flags it set.

Quota and usage rows name their resource as the panel's backends do (``resource`` text, not a
foreign key, like ``customers.currency``): a row for a resource not in ``quota_resources`` is
reported and skipped by the step rather than refused from the backend that wrote it.

Voice minutes per bundle and month are read per subscription from the call tables; the indexes
on ``(subscription_id, started_at)`` (with the duration, for index-only scans) serve that and the
reports' voice usage, which otherwise rescan every call of the month.
"""
from alembic import op

revision = "0009"
down_revision = "0008"

DDL = """
-- Enterprise reports e-mailed on an automatic schedule, for one customer or for a reseller's customers.
CREATE TABLE report_schedules (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id bigint REFERENCES customers,
    reseller_id bigint REFERENCES resellers,
    report_kind text NOT NULL CHECK (report_kind IN ('resource_usage', 'voice_usage')),
    recipients text[],                                -- NULL or empty: reported and skipped by the step
    frequency text NOT NULL CHECK (frequency IN ('daily', 'weekly', 'monthly')),
    next_run_on date NOT NULL,                        -- due from this day; its period ends (exclusive) here
    status text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'paused')),
    created_at timestamptz NOT NULL DEFAULT now(),
    CHECK ((customer_id IS NULL) <> (reseller_id IS NULL)),
    CHECK (frequency <> 'monthly' OR extract(day FROM next_run_on) = 1)   -- calendar months
);
CREATE INDEX ix_report_schedules_due ON report_schedules (next_run_on) WHERE status = 'active';
CREATE INDEX ix_report_schedules_customer ON report_schedules (customer_id) WHERE customer_id IS NOT NULL;
CREATE INDEX ix_report_schedules_reseller ON report_schedules (reseller_id) WHERE reseller_id IS NOT NULL;

-- One row per schedule and period, written with the period's e-mails (key 'report-<id>-<start>:<address>').
CREATE TABLE sent_reports (
    schedule_id bigint NOT NULL REFERENCES report_schedules ON DELETE CASCADE,
    period_start date NOT NULL,
    period_end date NOT NULL,                         -- exclusive
    report_kind text NOT NULL,
    recipients text[] NOT NULL,
    row_count integer NOT NULL,
    outbox_key text NOT NULL,
    sent_at timestamptz NOT NULL,                     -- the run's clock
    PRIMARY KEY (schedule_id, period_start)
);

-- The resources quotas are kept for, and their units.
CREATE TABLE quota_resources (
    code text PRIMARY KEY,
    name text NOT NULL,
    unit text NOT NULL
);
INSERT INTO quota_resources (code, name, unit) VALUES
    ('mailbox_storage', 'Mailbox storage', 'MB'),
    ('mailboxes', 'Mailboxes', 'mailboxes'),
    ('users', 'Users', 'users'),
    ('disk_space', 'Disk space', 'MB'),
    ('databases', 'Databases', 'databases'),
    ('websites', 'Web sites', 'sites'),
    ('bandwidth', 'Monthly traffic', 'MB'),
    ('sharepoint_storage', 'SharePoint storage', 'MB');

CREATE TABLE subscription_quotas (
    subscription_id bigint NOT NULL REFERENCES subscriptions,
    resource text NOT NULL,                           -- a quota_resources code (checked by the step)
    quota_limit numeric CHECK (quota_limit >= 0),     -- NULL: unlimited
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (subscription_id, resource)
);

-- Usage as measured by the backends' collectors; the latest sample is the current usage.
CREATE TABLE resource_usage_samples (
    subscription_id bigint NOT NULL REFERENCES subscriptions,
    resource text NOT NULL,
    sampled_at timestamptz NOT NULL,
    used numeric NOT NULL CHECK (used >= 0),
    PRIMARY KEY (subscription_id, resource, sampled_at)
);

-- An over-use episode: opened by the run that first finds usage above the quota, kept (one row)
-- while it stays above, resolved by the run that finds it back under (or the quota or
-- subscription gone). Times are runs' clocks.
CREATE TABLE quota_overuse (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subscription_id bigint NOT NULL REFERENCES subscriptions,
    resource text NOT NULL,
    quota_limit numeric NOT NULL,                     -- the quota when last seen
    used numeric NOT NULL,                            -- the latest usage seen
    peak_used numeric NOT NULL,
    sampled_at timestamptz NOT NULL,                  -- when that usage was measured
    opened_at timestamptz NOT NULL,
    last_seen_at timestamptz NOT NULL,                -- the latest run that found it over
    resolved_at timestamptz,
    resolution text CHECK (resolution IN ('under_quota', 'quota_removed', 'subscription_cancelled')),
    status text GENERATED ALWAYS AS (CASE WHEN resolved_at IS NULL THEN 'open' ELSE 'resolved' END) STORED,
    CHECK ((resolved_at IS NULL) = (resolution IS NULL)),
    UNIQUE (subscription_id, resource, opened_at)
);
CREATE UNIQUE INDEX ux_quota_overuse_open ON quota_overuse (subscription_id, resource) WHERE resolved_at IS NULL;

-- The subscription's "verify quota usage again" bit: a row means set (see the module docstring).
CREATE TABLE subscription_quota_rechecks (
    subscription_id bigint PRIMARY KEY REFERENCES subscriptions,
    reason text NOT NULL,                             -- 'quota_overuse': set (and cleared) by QuotaOverUsedWork
    flagged_at timestamptz NOT NULL
);

-- Voice bundles: minutes included per calendar month (the thread's time zone), per subscription.
CREATE TABLE voice_bundles (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subscription_id bigint NOT NULL REFERENCES subscriptions,
    name text NOT NULL,
    minutes_per_month integer NOT NULL CHECK (minutes_per_month > 0),
    status text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'cancelled'))
);
CREATE UNIQUE INDEX ux_voice_bundles_active ON voice_bundles (subscription_id) WHERE status = 'active';

-- One notice per bundle, month and threshold crossed. outbox_key NULL: crossed in the same run as
-- a higher threshold, whose message says it (recorded, so it is never sent later).
CREATE TABLE voice_bundle_notices (
    bundle_id bigint NOT NULL REFERENCES voice_bundles,
    month date NOT NULL CHECK (extract(day FROM month) = 1),
    threshold smallint NOT NULL CHECK (threshold IN (80, 100)),
    minutes_used integer NOT NULL,
    minutes_included integer NOT NULL,
    noticed_at timestamptz NOT NULL,                  -- the run's clock
    outbox_key text,
    PRIMARY KEY (bundle_id, month, threshold)
);

CREATE INDEX ix_ocs_call_records_subscription ON ocs_call_records (subscription_id, started_at)
    INCLUDE (duration_seconds);
CREATE INDEX ix_sip_usage_subscription ON sip_usage (subscription_id, started_at) INCLUDE (duration_seconds);
"""


def upgrade() -> None:
    op.execute(DDL)


DROP = """
DROP INDEX ix_sip_usage_subscription;
DROP INDEX ix_ocs_call_records_subscription;
DROP TABLE voice_bundle_notices, voice_bundles, subscription_quota_rechecks, quota_overuse, resource_usage_samples,
    subscription_quotas, quota_resources, sent_reports, report_schedules;
"""


def downgrade() -> None:
    op.execute(DROP)
