"""Server monitors, their checks and state changes, and health metrics (MonitoringWork, SyncHealthMetricsWork).

- ``servers``: the control server(s) and the remote servers the panel manages.
- ``server_stats`` / ``server_volume_stats`` / ``server_services``: the samples the stats threads
  (ServerStatsWork) write — CPU and memory per sample, disk per volume and sample, and the latest
  state of each Windows service. The CPU, memory, disk and services monitors read these.
- ``monitors``: what to check (``kind``), where (``server_id`` and/or ``params``), when it is
  down (``thresholds``), who hears of it (``alert_to``). ``conn_id`` names the Airflow connection
  holding a login (FTP, mail, web) or a resolver (DNS): passwords never sit in this table (a
  check constraint refuses secret-looking keys in ``params``).
- ``monitor_checks``: one row per monitor and run, keyed by the run's clock (its data interval's
  end), so a rerun or a retry of the same run adds nothing.
- ``monitor_state``: each monitor's current state (up/down) and since when.
- ``monitor_state_changes``: every transition, one per monitor and clock; its alert e-mails are
  keyed on it in the outbox.
- ``monitor_metrics_hourly``: the "Network director metrics" — per monitor and UTC hour, the
  checks' availability and response-time figures (avg, p50, p95, max), derived from
  ``monitor_checks`` by one set-based statement, so recomputing an hour gives the same row.
- ``server_health_metrics``: SyncHealthMetricsWork's readings, one row per server, run and metric.
"""
from alembic import op

revision = "0007"
down_revision = "0006"

RESOURCE_KINDS = "'cpu', 'memory', 'disk', 'services'"
KINDS = RESOURCE_KINDS + ", 'mail', 'iis', 'ftp', 'dns', 'tcp', 'web'"

DDL = f"""
CREATE TABLE servers (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL UNIQUE,
    role text NOT NULL CHECK (role IN ('control', 'remote')),
    host text NOT NULL,                               -- address the network monitors probe by default
    agent_url text CHECK (agent_url ~ '^https?://'),  -- the server's health endpoint (JSON), if it runs the agent
    conn_id text,                                     -- Airflow connection with the agent's token, if it needs one
    enabled boolean NOT NULL DEFAULT true,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Written by the stats threads; the monitors read the latest sample at or before their clock.
CREATE TABLE server_stats (
    server_id bigint NOT NULL REFERENCES servers ON DELETE CASCADE,
    sampled_at timestamptz NOT NULL,
    cpu_percent numeric(5,2) CHECK (cpu_percent BETWEEN 0 AND 100),
    memory_total_mb bigint CHECK (memory_total_mb > 0),
    memory_used_mb bigint CHECK (memory_used_mb >= 0),
    PRIMARY KEY (server_id, sampled_at)
);

CREATE TABLE server_volume_stats (
    server_id bigint NOT NULL REFERENCES servers ON DELETE CASCADE,
    sampled_at timestamptz NOT NULL,
    volume text NOT NULL,                             -- "C:", "/var"
    size_mb bigint NOT NULL CHECK (size_mb > 0),
    free_mb bigint NOT NULL CHECK (free_mb >= 0),
    PRIMARY KEY (server_id, sampled_at, volume)       -- a sample's volumes share its sampled_at
);

-- The latest known state of each service (upserted by the stats thread).
CREATE TABLE server_services (
    server_id bigint NOT NULL REFERENCES servers ON DELETE CASCADE,
    service_name text NOT NULL,                       -- "W3SVC", "MSExchangeTransport"
    display_name text,
    state text NOT NULL CHECK (state IN ('running', 'stopped', 'paused', 'starting', 'stopping', 'unknown')),
    sampled_at timestamptz NOT NULL,
    PRIMARY KEY (server_id, service_name)
);

CREATE TABLE monitors (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL UNIQUE,
    kind text NOT NULL CHECK (kind IN ({KINDS})),
    server_id bigint REFERENCES servers ON DELETE CASCADE,
    params jsonb NOT NULL DEFAULT '{{}}',               -- target: host, port, url, name, services, timeout …
    thresholds jsonb NOT NULL DEFAULT '{{}}',           -- max_percent, max_used_percent, min_free_mb, max_response_ms
    conn_id text,                                     -- Airflow connection with the login / resolver
    enabled boolean NOT NULL DEFAULT true,
    alert_to text[] NOT NULL DEFAULT '{{}}',            -- empty: MonitoringWork's alert addresses from the catalog
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT ck_monitors_resource_server CHECK (kind NOT IN ({RESOURCE_KINDS}) OR server_id IS NOT NULL),
    CONSTRAINT ck_monitors_objects CHECK (jsonb_typeof(params) = 'object' AND jsonb_typeof(thresholds) = 'object'),
    CONSTRAINT ck_monitors_no_secrets CHECK (NOT (params ?| ARRAY['password', 'passwd', 'secret', 'token', 'api_key']))
);
CREATE INDEX ix_monitors_server ON monitors (server_id);

CREATE TABLE monitor_checks (
    monitor_id bigint NOT NULL REFERENCES monitors ON DELETE CASCADE,
    checked_at timestamptz NOT NULL,                  -- the run's clock (its data interval's end)
    status text NOT NULL CHECK (status IN ('up', 'down', 'unknown')),
    response_ms numeric(10,1),                        -- network probes: first byte sent → last answer (monotonic)
    value numeric,                                    -- resource monitors: CPU %, memory %, worst disk %, services not running
    message text,
    PRIMARY KEY (monitor_id, checked_at)
);
CREATE INDEX ix_monitor_checks_checked_at ON monitor_checks (checked_at);

CREATE TABLE monitor_state (
    monitor_id bigint PRIMARY KEY REFERENCES monitors ON DELETE CASCADE,
    state text NOT NULL CHECK (state IN ('up', 'down')),
    since timestamptz NOT NULL,
    last_checked_at timestamptz NOT NULL,
    last_status text NOT NULL CHECK (last_status IN ('up', 'down', 'unknown')),
    last_message text,
    last_response_ms numeric(10,1)
);

CREATE TABLE monitor_state_changes (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    monitor_id bigint NOT NULL REFERENCES monitors ON DELETE CASCADE,
    changed_at timestamptz NOT NULL,
    from_state text CHECK (from_state IN ('up', 'down')),   -- NULL: the monitor's first check
    to_state text NOT NULL CHECK (to_state IN ('up', 'down')),
    message text,
    alerts integer NOT NULL DEFAULT 0,                -- alert e-mails queued for it (one per recipient)
    UNIQUE (monitor_id, changed_at),
    CHECK (from_state IS DISTINCT FROM to_state)
);
CREATE INDEX ix_monitor_state_changes_changed_at ON monitor_state_changes (changed_at);

CREATE TABLE monitor_metrics_hourly (
    monitor_id bigint NOT NULL REFERENCES monitors ON DELETE CASCADE,
    hour timestamptz NOT NULL,                        -- start of the UTC hour
    checks integer NOT NULL,
    up_checks integer NOT NULL,
    down_checks integer NOT NULL,
    unknown_checks integer NOT NULL,
    availability_percent numeric(6,3),                -- up / (up + down); NULL when every check was unknown
    response_ms_avg numeric(10,1),                    -- over the up checks that have a response time
    response_ms_p50 numeric(10,1),
    response_ms_p95 numeric(10,1),
    response_ms_max numeric(10,1),
    PRIMARY KEY (monitor_id, hour)
);

CREATE TABLE server_health_metrics (
    server_id bigint NOT NULL REFERENCES servers ON DELETE CASCADE,
    measured_at timestamptz NOT NULL,                 -- the run's clock
    metric text NOT NULL CHECK (metric ~ '^[a-z0-9_.]+$'),
    value double precision NOT NULL,
    PRIMARY KEY (server_id, measured_at, metric)
);
CREATE INDEX ix_server_health_metrics_measured_at ON server_health_metrics (measured_at);
"""


def upgrade() -> None:
    op.execute(DDL)


def downgrade() -> None:
    op.execute("DROP TABLE server_health_metrics, monitor_metrics_hourly, monitor_state_changes, monitor_state,"
               " monitor_checks, monitors, server_services, server_volume_stats, server_stats, servers")
