"""Voice: the SIP platform's companies, subscribers, numbers, usage and contracts in the panel DB.

What the voice threads keep (``panelflow.steps.voice``):

- ``sip_platforms``: the SIP platforms the provider runs (several are allowed), each reached through
  the Airflow connection named by ``conn_id`` (``SipPlatformHook``; no secret here). Written by the
  panel's operators. A platform is disabled, never deleted: its call records keep its id.
- ``voice_companies``: a customer's SIP company = one SIP domain on one platform (unique per
  platform), with its channel limit (concurrent calls; NULL = unlimited), its status, and what
  VoiceCurrentLimitSyncWork measured last (live calls, minutes used in the bundle period, over the
  channel limit, ``usage_at``). The subscription is the one its calls are billed to and counted
  against (its voice bundle). Producers: the SIP group actions (``create_company`` … queued by the
  panel — a documented panel-side writer of ``group_action_jobs`` — and by ProvisioningWork's SIP
  contracts), and VoiceSyncWork (limits, status, deletion found on the platform). A company on the
  platform that the panel does not know is reported by VoiceSyncWork, never imported (it has no
  customer). A deleted company keeps its row (and domain) until VoiceCurrentLimitSyncWork 4 removes
  it after the retention, so late call records still find their customer.
- ``voice_subscribers``: a company's SIP accounts (UNIQUE per company and username), with the
  platform's reference (``external_ref``), status and measured usage. Producers: the SIP group
  actions and VoiceSyncWork (added, changed, gone → ``deleted_at``). No password is ever kept here.
- ``voice_numbers``: the numbers (E.164 digits) assigned to subscribers, unique per platform.
  Producers: ``assign_number``/``release_number`` jobs and VoiceSyncWork.
- ``sip_usage`` (0006) gains the platform call it was imported from (``platform_id``, ``callid``:
  UNIQUE, so CallDataProcessWork imports a call once whatever reruns or backfills do), when it
  ended, and the subscriber who placed it (``voice_subscriber_id``, for the per-subscriber usage).
  Neither id is a foreign key: 1,000,000 records are imported in one statement and a per-row check
  would cost more than the insert; platforms are never deleted, and a subscriber's calls outlive
  its row (they are billed history). Rows written by other means (the demo, older imports) keep
  both NULL.
- ``voice_bundle_usage``: GroupActionWorkLync 2, per active bundle and period (calendar month in
  the thread's time zone): minutes used (per started minute, as BillingWork rates) from
  ``sip_usage`` and ``ocs_call_records`` up to the run's clock, ``over_limit`` and ``over_since``
  (the clock of the run that first found it over) for OverusageResourceNotification. A new period
  is a new row starting from 0: the reset. ``counted_at`` is the clock of the run that wrote it; an
  older run (a backfill) never overwrites a newer count.
- ``sip_bundle_subscriber_usage``: ProvisioningWork 15, the same per bundle, subscriber and period;
  VoiceCurrentLimitSyncWork 1 copies the subscriber's platform reference into ``external_ref``.
- ``sip_contracts``: a SIP contract of a subscription, written by the panel (a documented
  panel-side writer): the company to run (platform, SIP domain, channel limit), the first day, the
  term in months, auto-renewal, and ``ends_on`` — the first day after the current term. ProvisioningWork
  31 moves it pending → active (start) → ended, and pushes ``ends_on`` on renewal.
- ``sip_contract_actions``: one row per contract, due day and action (start, renew, end), written in
  the same transaction as the job it queued and the contract and subscription it changed: an
  action is executed once, whichever run (rerun, backfill, a later day's run) gets to it first.
"""
from alembic import op

from panelflow.db.ddl import conn_id_check

revision = "0022"
down_revision = "0021"

# As the SIP platform accepts them (a DNS name of at most 64 characters; Kamailio's varchar(64)).
DOMAIN = r"'^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$'"
USERNAME = r"'^[A-Za-z0-9._-]{1,64}$'"
NUMBER = r"'^[0-9]{3,15}$'"

DDL = f"""
CREATE TABLE sip_platforms (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL UNIQUE,
    conn_id text NOT NULL {conn_id_check("conn_id")},   -- the Airflow connection of SipPlatformHook
    enabled boolean NOT NULL DEFAULT true,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE voice_companies (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    platform_id bigint NOT NULL REFERENCES sip_platforms,
    customer_id bigint NOT NULL REFERENCES customers,
    subscription_id bigint REFERENCES subscriptions,  -- billed to and counted against; NULL: calls reported
    sip_domain text NOT NULL CHECK (sip_domain ~ {DOMAIN} AND length(sip_domain) <= 64),
    channel_limit integer CHECK (channel_limit >= 0), -- concurrent calls; NULL: unlimited
    sync_enabled boolean NOT NULL DEFAULT true,
    status text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended', 'deleted')),
    current_calls integer NOT NULL DEFAULT 0,
    minutes_used bigint NOT NULL DEFAULT 0,           -- in the current bundle period
    over_channel_limit boolean NOT NULL DEFAULT false,
    usage_at timestamptz,                             -- the clock of the run that measured the usage
    synced_at timestamptz,
    created_at timestamptz NOT NULL,
    deleted_at timestamptz,
    UNIQUE (platform_id, sip_domain),
    CHECK ((status = 'deleted') = (deleted_at IS NOT NULL))
);
CREATE INDEX ix_voice_companies_subscription ON voice_companies (subscription_id);
CREATE INDEX ix_voice_companies_deleted ON voice_companies (deleted_at) WHERE status = 'deleted';

CREATE TABLE voice_subscribers (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    company_id bigint NOT NULL REFERENCES voice_companies ON DELETE CASCADE,
    username text NOT NULL CHECK (username ~ {USERNAME}),
    external_ref text,                                -- the platform's reference of the account
    status text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended', 'deleted')),
    current_calls integer NOT NULL DEFAULT 0,
    minutes_used bigint NOT NULL DEFAULT 0,           -- in the current bundle period
    usage_at timestamptz,
    synced_at timestamptz,
    created_at timestamptz NOT NULL,
    deleted_at timestamptz,
    UNIQUE (company_id, username),
    CHECK ((status = 'deleted') = (deleted_at IS NOT NULL))
);
CREATE INDEX ix_voice_subscribers_deleted ON voice_subscribers (deleted_at) WHERE status = 'deleted';

CREATE TABLE voice_numbers (
    platform_id bigint NOT NULL REFERENCES sip_platforms,
    number text NOT NULL CHECK (number ~ {NUMBER}),
    subscriber_id bigint NOT NULL REFERENCES voice_subscribers ON DELETE CASCADE,
    assigned_at timestamptz NOT NULL,
    synced_at timestamptz,
    PRIMARY KEY (platform_id, number)
);
CREATE INDEX ix_voice_numbers_subscriber ON voice_numbers (subscriber_id);

-- callid is an opaque token: byte order ("C") keeps its unique index cheap to maintain and probe.
ALTER TABLE sip_usage ADD COLUMN platform_id bigint, ADD COLUMN callid text COLLATE "C", ADD COLUMN ended_at timestamptz,
    ADD COLUMN voice_subscriber_id bigint,
    ADD CONSTRAINT ux_sip_usage_call UNIQUE (platform_id, callid);
CREATE INDEX ix_sip_usage_voice_subscriber ON sip_usage (voice_subscriber_id, started_at) INCLUDE (duration_seconds)
    WHERE voice_subscriber_id IS NOT NULL;

CREATE TABLE voice_bundle_usage (
    bundle_id bigint NOT NULL REFERENCES voice_bundles,
    period_start date NOT NULL CHECK (extract(day FROM period_start) = 1),
    period_end date NOT NULL,                         -- exclusive
    minutes_included integer NOT NULL,
    minutes_used bigint NOT NULL,
    calls bigint NOT NULL,
    over_limit boolean NOT NULL,
    over_since timestamptz,                           -- the clock of the run that first found it over
    counted_at timestamptz NOT NULL,                  -- the clock of the run that counted
    PRIMARY KEY (bundle_id, period_start),
    CHECK (over_limit = (over_since IS NOT NULL))
);
CREATE INDEX ix_voice_bundle_usage_over ON voice_bundle_usage (period_start) WHERE over_limit;

CREATE TABLE sip_bundle_subscriber_usage (
    bundle_id bigint NOT NULL REFERENCES voice_bundles ON DELETE CASCADE,
    subscriber_id bigint NOT NULL REFERENCES voice_subscribers ON DELETE CASCADE,
    period_start date NOT NULL CHECK (extract(day FROM period_start) = 1),
    minutes bigint NOT NULL,
    calls bigint NOT NULL,
    external_ref text,                                -- the subscriber's platform reference
    counted_at timestamptz NOT NULL,
    PRIMARY KEY (bundle_id, subscriber_id, period_start)
);
CREATE INDEX ix_sip_bundle_subscriber_usage_subscriber ON sip_bundle_subscriber_usage (subscriber_id);

CREATE TABLE sip_contracts (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subscription_id bigint NOT NULL REFERENCES subscriptions,
    platform_id bigint NOT NULL REFERENCES sip_platforms,
    sip_domain text NOT NULL CHECK (sip_domain ~ {DOMAIN}),
    channel_limit integer CHECK (channel_limit >= 0),
    starts_on date NOT NULL,
    term_months integer NOT NULL CHECK (term_months BETWEEN 1 AND 120),
    auto_renew boolean NOT NULL DEFAULT true,
    ends_on date NOT NULL,                            -- the first day after the current term
    status text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'active', 'ended')),
    created_at timestamptz NOT NULL DEFAULT now(),
    CHECK (ends_on > starts_on)
);
CREATE INDEX ix_sip_contracts_due ON sip_contracts (starts_on) WHERE status = 'pending';
CREATE INDEX ix_sip_contracts_ending ON sip_contracts (ends_on) WHERE status = 'active';

CREATE TABLE sip_contract_actions (
    contract_id bigint NOT NULL REFERENCES sip_contracts ON DELETE CASCADE,
    day date NOT NULL,                                -- the day the action was due
    action text NOT NULL CHECK (action IN ('start', 'renew', 'end')),
    job_id bigint,                                    -- the SIP group action it queued (renew queues none)
    executed_at timestamptz NOT NULL,                 -- the clock of the run that executed it
    PRIMARY KEY (contract_id, day, action)
);
"""


def upgrade() -> None:
    op.execute(DDL)


DROP = """
DROP TABLE sip_contract_actions, sip_contracts, sip_bundle_subscriber_usage, voice_bundle_usage;
DROP INDEX ix_sip_usage_voice_subscriber;
ALTER TABLE sip_usage DROP CONSTRAINT ux_sip_usage_call, DROP COLUMN platform_id, DROP COLUMN callid,
    DROP COLUMN ended_at, DROP COLUMN voice_subscriber_id;
DROP TABLE voice_numbers, voice_subscribers, voice_companies, sip_platforms;
"""


def downgrade() -> None:
    op.execute(DROP)
