"""Workflows created in the panel, VPS update notices and configuration-studio templates.

WorkflowsThread (``panelflow.steps.workflows``) — the panel writes the first three tables and the
panel-side decisions; panelflow writes the rest:

- ``workflow_definitions`` / ``workflow_steps``: a named sequence of numbered steps (``position``
  1, 2 …), each of one ``kind``: ``action`` (a group-action job to queue and wait for: ``config``
  holds ``backend``, ``action``, ``payload``, ``priority``, optional ``timeout_minutes``),
  ``approval`` (``approvers``' e-mails, ``timeout_minutes``, ``quorum``, ``message``, the decision
  page's ``approval_url``), ``wait`` (``minutes`` or
  ``until``) or ``notify`` (``to``, ``subject``, ``message``). The panel creates a new definition
  rather than editing one in use: a running workflow reads its step when it reaches it.
- ``workflows``: one instance of a definition (``params`` overlay every action's payload; they
  are kept with the workflow, so the panel puts no password in them).
  The panel inserts it ``pending`` (and may set ``cancelled``); panelflow moves it through
  ``running`` to ``succeeded`` or ``failed`` (with ``failure_reason``). ``position`` is the step
  it is at, ``step_deadline`` when that step times out (approval, action) or ends (wait),
  ``job_id`` the action's queued job.
- ``workflow_transitions``: every transition, written in the transaction that does its side
  effect (job queued, e-mail queued). Its key (workflow, position, transition) is what makes a
  killed or repeated run unable to do a step twice.
- ``workflow_events``: approvals given or refused, by e-mail link (``record_approval``) or by a
  panel action (the panel inserts ``source = 'panel'``). One decision per approver and step.
  A job's end is not an event row: the job's own row (``group_action_jobs``) is read.
- ``workflow_approval_tokens``: the e-mailed link's token, kept only as its SHA-256.

ProvisioningWork 30 (``panelflow.steps.vps_notices``):

- ``vps_notified_states``: per VM, the host and size (processors, startup memory, disk, plan) its
  customer last knows of — the baseline a change is measured against (the inventory keeps only
  the current row, no history).
- ``vps_update_notices``: one row per change noticed, numbered per VM (``seq``); the e-mail's
  outbox key names it.

ProvisioningWork 45 (``panelflow.steps.configuration_studio``) — the panel writes templates and
queues applications:

- ``config_templates`` / ``config_template_settings``: a template is a list of settings, each of
  one ``kind`` (``registry_value``: HKLM path, name, type, value; ``service``: name, startup type,
  status) applied by the scripts in ``include/powershell/configuration/``.
- ``config_applications``: a template queued for a server (``servers.psrp_conn_id``), applied
  once, then re-read on later runs for the drift report.
- ``config_application_results``: per application and setting, the desired value, what the
  server reported after applying and at the last check, ``in_sync`` and any error.
"""
from alembic import op

revision = "0029"
down_revision = "0028"

DDL = r"""
CREATE TABLE workflow_definitions (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL UNIQUE,
    description text,
    enabled boolean NOT NULL DEFAULT true,            -- false: pending instances are not started
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE workflow_steps (
    definition_id bigint NOT NULL REFERENCES workflow_definitions ON DELETE CASCADE,
    position integer NOT NULL CHECK (position > 0),
    kind text NOT NULL CHECK (kind IN ('action', 'approval', 'wait', 'notify')),
    name text NOT NULL,
    config jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(config) = 'object'),
    PRIMARY KEY (definition_id, position)
);

CREATE TABLE workflows (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    definition_id bigint NOT NULL REFERENCES workflow_definitions,
    params jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(params) = 'object'),
    requested_by text,
    created_at timestamptz NOT NULL DEFAULT now(),
    state text NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'running', 'succeeded', 'failed', 'cancelled')),
    position integer NOT NULL DEFAULT 0 CHECK (position >= 0),
    step_started_at timestamptz,                      -- the run's clock when the current step began
    step_deadline timestamptz,
    job_id bigint REFERENCES group_action_jobs ON DELETE SET NULL,
    checked_at timestamptz,                           -- the last run that looked at it (fair rotation)
    started_at timestamptz,
    finished_at timestamptz,
    failure_reason text,
    CHECK ((state = 'failed') = (failure_reason IS NOT NULL)),
    CHECK ((state IN ('succeeded', 'failed')) = (finished_at IS NOT NULL))
);
CREATE INDEX ix_workflows_active ON workflows (checked_at NULLS FIRST, id) WHERE state IN ('pending', 'running');

CREATE TABLE workflow_transitions (
    workflow_id bigint NOT NULL REFERENCES workflows ON DELETE CASCADE,
    position integer NOT NULL,
    transition text NOT NULL
        CHECK (transition IN ('entered', 'completed', 'approved', 'refused', 'timed_out', 'failed')),
    at timestamptz NOT NULL,                          -- the run's clock
    detail jsonb NOT NULL DEFAULT '{}',
    PRIMARY KEY (workflow_id, position, transition)
);

CREATE TABLE workflow_events (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    workflow_id bigint NOT NULL REFERENCES workflows ON DELETE CASCADE,
    position integer NOT NULL CHECK (position > 0),
    decision text NOT NULL CHECK (decision IN ('approved', 'refused')),
    source text NOT NULL CHECK (source IN ('email', 'panel')),
    actor text NOT NULL,                              -- the approver's e-mail or the panel user
    comment text,
    occurred_at timestamptz NOT NULL,
    UNIQUE (workflow_id, position, actor)
);

CREATE TABLE workflow_approval_tokens (
    token_sha256 bytea PRIMARY KEY CHECK (length(token_sha256) = 32),
    workflow_id bigint NOT NULL REFERENCES workflows ON DELETE CASCADE,
    position integer NOT NULL,
    approver text NOT NULL,
    expires_at timestamptz NOT NULL,
    used_at timestamptz,
    UNIQUE (workflow_id, position, approver)
);

CREATE TABLE vps_notified_states (
    vm_id bigint PRIMARY KEY REFERENCES hyperv_vms ON DELETE CASCADE,
    host_id bigint,                                   -- no foreign key: a host removed later stays named here
    host_name text,
    processor_count integer,
    memory_startup_bytes bigint,
    disk_bytes bigint,
    plan text,
    recorded_at timestamptz NOT NULL                  -- the run's clock
);

CREATE TABLE vps_update_notices (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    vm_id bigint NOT NULL REFERENCES hyperv_vms ON DELETE CASCADE,
    seq integer NOT NULL CHECK (seq > 0),
    changes text[] NOT NULL CHECK (cardinality(changes) > 0),
    old_state jsonb NOT NULL,
    new_state jsonb NOT NULL,
    customer_id bigint REFERENCES customers ON DELETE SET NULL,
    to_address text NOT NULL,
    noticed_at timestamptz NOT NULL,
    UNIQUE (vm_id, seq)
);

CREATE TABLE config_templates (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL UNIQUE,
    description text,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE config_template_settings (
    template_id bigint NOT NULL REFERENCES config_templates ON DELETE CASCADE,
    position integer NOT NULL CHECK (position > 0),
    kind text NOT NULL CHECK (kind IN ('registry_value', 'service')),
    setting jsonb NOT NULL CHECK (jsonb_typeof(setting) = 'object'),
    PRIMARY KEY (template_id, position)
);

CREATE TABLE config_applications (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    template_id bigint NOT NULL REFERENCES config_templates,
    server_id bigint NOT NULL REFERENCES servers ON DELETE CASCADE,
    requested_by text,
    requested_at timestamptz NOT NULL DEFAULT now(),
    status text NOT NULL DEFAULT 'queued'
        CHECK (status IN ('queued', 'applying', 'applied', 'partial', 'failed')),
    attempts integer NOT NULL DEFAULT 0,
    started_at timestamptz,
    applied_at timestamptz,                           -- the run's clock when it was applied
    last_checked_at timestamptz,                      -- the last drift check (or the apply)
    drifted integer,                                  -- settings out of sync at the last check
    error text
);
CREATE INDEX ix_config_applications_queued ON config_applications (id) WHERE status IN ('queued', 'applying');
CREATE INDEX ix_config_applications_check ON config_applications (last_checked_at, id)
    WHERE status IN ('applied', 'partial');

CREATE TABLE config_application_results (
    application_id bigint NOT NULL REFERENCES config_applications ON DELETE CASCADE,
    position integer NOT NULL,
    kind text NOT NULL,
    desired jsonb NOT NULL,
    applied jsonb,                                    -- what the server reported right after applying
    actual jsonb,                                     -- what it reported at the last check
    in_sync boolean,
    error text,
    checked_at timestamptz NOT NULL,
    PRIMARY KEY (application_id, position)
);
"""


def upgrade() -> None:
    op.execute(DDL)


def downgrade() -> None:
    op.execute("DROP TABLE config_application_results, config_applications, config_template_settings,"
               " config_templates, vps_update_notices, vps_notified_states, workflow_approval_tokens,"
               " workflow_events, workflow_transitions, workflows, workflow_steps, workflow_definitions")
