"""Lync / Skype for Business: pools, users, SPLA reports, call-record import, workflow audio, hosted voice

What GroupActionWorkLync 1, CallDataProcessWork 1–2, UsageReportWork 6 and ProvisioningWork 32–33 keep
(``panelflow.steps.lync``):

- ``lync_pools``: the Lync/SfB pools the panel manages — written by the panel's operators (the pool
  settings page), nothing here invents one. ``conn_id`` is the Airflow psrp connection of one of the
  pool's Front End servers (every cmdlet runs there); ``cdr_sql_instance``/``cdr_database`` name the
  Monitoring SQL instance and its CDR database (``LcsCDR``), queried by a script on that Front End
  (NULL: no call records are imported for the pool); ``audio_conn_id`` is an Airflow ``samba``
  connection (host, schema = share, login, password, port) of the pool's file store and
  ``audio_folder`` the folder under it holding the Response Group workflow prompts (NULL: none
  synced). No secret lives here.
- ``lync_users``: one row per Lync user the panel provisioned (its SIP address, ``sip:`` + the address
  in lower case, is unique across pools, as in Lync; a number is one user's). Producers: the panel
  writes the rows of a hosted voice subscription's users (pool, AD user, SIP address, wanted number
  and policies, ``enabled`` false) when the customer adds them;
  the ``lync`` group actions (queued by the panel, or by ProvisioningWork 32 for a contract's
  start and end) write back what the server answered (enabled, line URI, policies). ``edition``
  is derived, never written: :func:`lync_edition` — Enterprise Voice → Plus, a per-user
  conferencing policy granted → Enterprise, else Standard (the SPLA Lync Server SALs; each user
  counts once, at the highest edition their features need). The SPLA report applies the same
  function to the server's own answer.
- ``lync_spla_reports``: licensed users per pool, report month and edition, written once per pool and
  month (all three editions in one transaction; a month with rows is never recomputed).
- ``ocs_call_records`` (0006) gains the CDR store and session key of a Lync call: ``cdr_store``
  (``<sql instance>/<database>``, lower case — several pools may report to one Monitoring store, and
  a call is one row whichever pool's Front End read it), ``session_id_time`` + ``session_id_seq``
  (LcsCDR SessionDetails' key), unique together: a call imported twice (rerun, backfill,
  overlapping look-back, a retry after a killed worker) is one row. ``pool_id`` says which pool's
  Front End read it. Rows written by other sources keep these NULL (NULLs are distinct, so the key
  does not bind them).
- ``lync_unmatched_call_records``: calls whose caller is not a panel user with a subscription yet;
  kept (same key) and reported, and moved into ``ocs_call_records`` by a later import once the
  caller's ``lync_users`` row names a subscription — a call is never lost.
- ``lync_workflow_audio_files``: each prompt file seen on a pool's share (path relative to the
  audio folder), its size and modification time on the share (the cheap change test), the SHA-256
  of the copy, where the copy is, and ``removed_at`` once it has gone from the share.
- ``hosted_voice_contracts``: written by the panel when a customer signs for hosted voice (pool,
  subscription, first day, term in months, auto-renewal, end of the current term, price per
  user); at most one pending or active contract per subscription. ``addon_id`` is the
  subscription's "Hosted voice users" add-on, created by ProvisioningWork 33.
- ``hosted_voice_contract_actions``: what ProvisioningWork 32 executed, one row per contract, due day
  and action (start, renew, end): the row and its effects commit together, so an action runs once.
- ``hosted_voice_billing_details``: per subscription and month, every SIP address that was an enabled
  hosted voice user during the month (one row each); their count is the add-on's quantity, which
  BillingWork invoices.
"""
from alembic import op

from panelflow.db.ddl import conn_id_check

revision = "0023"
down_revision = "0022"

MONEY = "numeric(14,2)"

DDL = rf"""
CREATE FUNCTION lync_edition(enterprise_voice boolean, conferencing_policy text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN enterprise_voice THEN 'Plus'
                WHEN nullif(conferencing_policy, '') IS NOT NULL THEN 'Enterprise'
                ELSE 'Standard' END
$$;

CREATE TABLE lync_pools (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL UNIQUE,                        -- the panel's name of the pool (POOL01)
    fqdn text NOT NULL UNIQUE,                        -- the registrar pool's FQDN, as Get-CsUser names it
    conn_id text NOT NULL {conn_id_check("conn_id")},  -- psrp connection of a Front End of the pool
    cdr_sql_instance text,                            -- Monitoring SQL instance (SQLMON01\LYNCMON)
    cdr_database text NOT NULL DEFAULT 'LcsCDR' CHECK (cdr_database ~ '^[A-Za-z0-9_]{{1,128}}$'),
    audio_conn_id text {conn_id_check("audio_conn_id")},  -- samba connection of the file store share
    audio_folder text CHECK (audio_folder !~ '(^|[\\/])\.\.?([\\/]|$)'),
    enabled boolean NOT NULL DEFAULT true,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE lync_users (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    pool_id bigint NOT NULL REFERENCES lync_pools,
    customer_id bigint REFERENCES customers,
    subscription_id bigint REFERENCES subscriptions,
    sip_address text NOT NULL CHECK (sip_address ~ '^sip:[^@\s]+@[^@\s]+$' AND sip_address = lower(sip_address)),
    ad_user text NOT NULL,                            -- the AD identity Enable-CsUser was given (UPN, DOMAIN\sam)
    display_name text,
    line_uri text CHECK (line_uri ~ '^tel:\+[0-9]{{3,15}}(;ext=[0-9]+)?$'),
    enterprise_voice boolean NOT NULL DEFAULT false,
    voice_policy text,                                -- per-user policy; NULL: the global/site policy
    conferencing_policy text,
    enabled boolean NOT NULL DEFAULT false,
    edition text GENERATED ALWAYS AS (lync_edition(enterprise_voice, conferencing_policy)) STORED,
    removed_at timestamptz,                           -- Disable-CsUser: no Lync attributes left
    changed_at timestamptz NOT NULL,
    UNIQUE (sip_address)
);
CREATE UNIQUE INDEX ux_lync_users_line_uri ON lync_users (line_uri) WHERE line_uri IS NOT NULL;
CREATE INDEX ix_lync_users_subscription ON lync_users (subscription_id) WHERE subscription_id IS NOT NULL;

CREATE TABLE lync_spla_reports (
    pool_id bigint NOT NULL REFERENCES lync_pools,
    month date NOT NULL CHECK (extract(day FROM month) = 1),
    edition text NOT NULL CHECK (edition IN ('Standard', 'Enterprise', 'Plus')),
    users integer NOT NULL CHECK (users >= 0),
    reported_at timestamptz NOT NULL,                 -- the run's clock
    PRIMARY KEY (pool_id, month, edition)
);

ALTER TABLE ocs_call_records
    ADD COLUMN pool_id bigint REFERENCES lync_pools,
    ADD COLUMN cdr_store text,                        -- 'sqlmon01\lyncmon/lcscdr'
    ADD COLUMN session_id_time timestamp,             -- LcsCDR SessionDetails.SessionIdTime (UTC)
    ADD COLUMN session_id_seq integer,
    ADD COLUMN ended_at timestamptz,
    ADD CONSTRAINT ux_ocs_call_records_session UNIQUE (cdr_store, session_id_time, session_id_seq),
    ADD CONSTRAINT ck_ocs_call_records_session
        CHECK ((cdr_store IS NULL) = (session_id_time IS NULL) AND (cdr_store IS NULL) = (session_id_seq IS NULL));

CREATE TABLE lync_unmatched_call_records (
    cdr_store text NOT NULL,
    pool_id bigint NOT NULL REFERENCES lync_pools,
    session_id_time timestamp NOT NULL,
    session_id_seq integer NOT NULL,
    caller text NOT NULL,
    destination text NOT NULL,
    started_at timestamptz NOT NULL,
    ended_at timestamptz NOT NULL,
    duration_seconds integer NOT NULL,
    first_seen_at timestamptz NOT NULL,
    PRIMARY KEY (cdr_store, session_id_time, session_id_seq)
);

CREATE TABLE lync_workflow_audio_files (
    pool_id bigint NOT NULL REFERENCES lync_pools,
    path text NOT NULL,                               -- relative to the pool's audio folder, '/'-separated
    size_bytes bigint NOT NULL CHECK (size_bytes >= 0),
    modified_at timestamptz NOT NULL,                 -- last write time on the share
    sha256 char(64) NOT NULL CHECK (sha256 ~ '^[0-9a-f]{{64}}$'),
    local_path text NOT NULL,
    copied_at timestamptz NOT NULL,                   -- when the content last changed here
    checked_at timestamptz NOT NULL,
    removed_at timestamptz,
    PRIMARY KEY (pool_id, path)
);

CREATE TABLE hosted_voice_contracts (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subscription_id bigint NOT NULL REFERENCES subscriptions,
    pool_id bigint NOT NULL REFERENCES lync_pools,
    starts_on date NOT NULL,
    term_months integer NOT NULL CHECK (term_months BETWEEN 1 AND 120),
    auto_renew boolean NOT NULL DEFAULT true,
    ends_on date NOT NULL,                            -- the last day of the current term is ends_on - 1
    user_price {MONEY} NOT NULL CHECK (user_price >= 0),
    status text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'active', 'ended')),
    addon_id bigint REFERENCES subscription_addons,
    CHECK (ends_on > starts_on)
);
CREATE UNIQUE INDEX ux_hosted_voice_contracts_open ON hosted_voice_contracts (subscription_id)
    WHERE status IN ('pending', 'active');

CREATE TABLE hosted_voice_contract_actions (
    contract_id bigint NOT NULL REFERENCES hosted_voice_contracts,
    day date NOT NULL,                                -- the day the action was due (starts_on, ends_on)
    action text NOT NULL CHECK (action IN ('start', 'renew', 'end')),
    executed_at timestamptz NOT NULL,
    jobs_queued integer NOT NULL DEFAULT 0,
    PRIMARY KEY (contract_id, day, action)
);

CREATE TABLE hosted_voice_billing_details (
    subscription_id bigint NOT NULL REFERENCES subscriptions,
    month date NOT NULL CHECK (extract(day FROM month) = 1),
    sip_address text NOT NULL,
    lync_user_id bigint REFERENCES lync_users ON DELETE SET NULL,
    edition text NOT NULL,
    unit_price {MONEY} NOT NULL,
    recorded_at timestamptz NOT NULL,
    PRIMARY KEY (subscription_id, month, sip_address)
);
"""


def upgrade() -> None:
    op.execute(DDL)


def downgrade() -> None:
    op.execute("DROP TABLE hosted_voice_billing_details, hosted_voice_contract_actions, hosted_voice_contracts,"
               " lync_workflow_audio_files, lync_unmatched_call_records, lync_spla_reports, lync_users")
    op.execute("ALTER TABLE ocs_call_records DROP CONSTRAINT ck_ocs_call_records_session,"
               " DROP CONSTRAINT ux_ocs_call_records_session, DROP COLUMN ended_at, DROP COLUMN session_id_seq,"
               " DROP COLUMN session_id_time, DROP COLUMN cdr_store, DROP COLUMN pool_id")
    op.execute("DROP TABLE lync_pools")
    op.execute("DROP FUNCTION lync_edition(boolean, text)")
