"""ProvisioningWork's panel-database housekeeping: contacts, unverified customers, password
salting, credit limits, add-on merging, recycle bin and recovery notices, failure notices.

Exactly-once lives in the keys, as in 0006 and 0009: a failure is noticed once per (source,
failed thing, occurrence) and every service-queue error entry belongs to at most one notice; a
recycle-bin or recovery notice is sent once per item and reminder; a CSP trial's expiry is acted
on once (``csp_trials.handled_at``). The steps write with ``ON CONFLICT DO NOTHING`` against
these, and each notice row is written in the transaction that queues its e-mail.

What is added to existing tables is what describes those rows: a customer's self sign-up and
its verification, its credit limit; a domain's status at its registrar (copied from
``registrar_domains``, 0010); an add-on merged into another. What a step derives or tracks per
subscription is a narrow table keyed by the subscription instead (``subscription_credit_limits``,
``csp_trials``), for the reason 0009 gives: BillingWork keeps due subscription rows locked and
relies on their updates staying HOT.

Credentials: one row per login (employee, customer or customer contact), the hash and its
scheme. Legacy rows hold an unsalted hex digest (``md5``, ``sha1``, ``sha256``); ProvisioningWork
wraps each in scrypt with a random salt (``scrypt+md5`` …: scrypt of the legacy hex digest), with
the salt and the KDF's parameters on the row, so a login verifies by computing the legacy digest
of what was typed and then the KDF — the plaintext is never needed. ``scrypt`` is scrypt of the
password itself (what the panel writes when a password is set). A customer's or contact's
credential goes with it (``ON DELETE CASCADE``); employees are the panel's staff accounts,
outside this schema (``employee_id`` is not a foreign key, like ``sessions.user_id``).
"""
from alembic import op

revision = "0011"
down_revision = "0010"

LEGACY_SCHEMES = ("md5", "sha1", "sha256")
SCHEMES = (*LEGACY_SCHEMES, *(f"scrypt+{s}" for s in LEGACY_SCHEMES), "scrypt")


def _quoted(values) -> str:
    return ", ".join(f"'{v}'" for v in values)


DDL = f"""
-- Customers: a self sign-up (the panel's store) and when its e-mail address was confirmed; the
-- credit limit (the customer's currency; NULL: no limit). Staff- or reseller-created customers have
-- no signed_up_at and are never "unverified".
ALTER TABLE customers
    ADD COLUMN signed_up_at timestamptz,
    ADD COLUMN email_verified_at timestamptz,
    ADD COLUMN credit_limit numeric(14,2) CONSTRAINT ck_customers_credit_limit CHECK (credit_limit >= 0);
CREATE INDEX ix_customers_unverified ON customers (signed_up_at, id)
    WHERE signed_up_at IS NOT NULL AND email_verified_at IS NULL;

-- A customer's contacts; the primary one carries the customer's own e-mail address.
CREATE TABLE customer_contacts (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id bigint NOT NULL REFERENCES customers ON DELETE CASCADE,
    name text NOT NULL,
    email text,
    phone text,
    is_primary boolean NOT NULL DEFAULT false,
    email_synced_at timestamptz,                      -- the run that last set email from the customer's
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ix_customer_contacts_customer ON customer_contacts (customer_id);
CREATE UNIQUE INDEX ux_customer_contacts_primary ON customer_contacts (customer_id) WHERE is_primary;

CREATE TABLE credentials (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    principal_kind text NOT NULL CHECK (principal_kind IN ('employee', 'customer', 'contact')),
    employee_id bigint UNIQUE,
    customer_id bigint UNIQUE REFERENCES customers ON DELETE CASCADE,
    contact_id bigint UNIQUE REFERENCES customer_contacts ON DELETE CASCADE,
    login text NOT NULL,
    hash_scheme text NOT NULL CHECK (hash_scheme IN ({_quoted(SCHEMES)})),
    password_hash text NOT NULL,                      -- lower-case hex (legacy rows: as the old panel stored it)
    salt bytea,
    kdf_params jsonb,                                 -- scrypt: n, r, p, dklen
    salted_at timestamptz,                            -- the run that wrapped a legacy hash
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT ck_credentials_principal CHECK (
        num_nonnulls(employee_id, customer_id, contact_id) = 1
        AND CASE principal_kind WHEN 'employee' THEN employee_id IS NOT NULL
                                WHEN 'customer' THEN customer_id IS NOT NULL
                                ELSE contact_id IS NOT NULL END),
    CONSTRAINT ck_credentials_salted CHECK (
        (left(hash_scheme, 6) = 'scrypt') = (salt IS NOT NULL AND kdf_params IS NOT NULL))
);
CREATE UNIQUE INDEX ux_credentials_login ON credentials (principal_kind, lower(login));
CREATE INDEX ix_credentials_unsalted ON credentials (id) WHERE hash_scheme IN ({_quoted(LEGACY_SCHEMES)});

-- The panel's domains: their status at the registrar, from DomainNameDataSyncThread's registrar_domains.
-- registrar_account_id is not a foreign key: ProvisioningWork clears it when the registrar's data goes.
ALTER TABLE domains
    ADD COLUMN registrar_account_id bigint,
    ADD COLUMN registrar_status text,
    ADD COLUMN registrar_expires_at timestamptz,
    ADD COLUMN registrar_listed boolean,              -- false: the registrar no longer lists it
    ADD COLUMN registrar_status_at timestamptz;       -- the run that last changed these columns

-- An add-on merged into another of the same subscription, name and price (it is cancelled, keeps its
-- quantity as it was, and names the add-on that carries it now). NOT VALID: every existing row has
-- merged_into NULL, so there is nothing to validate and no scan under the ALTER's lock.
ALTER TABLE subscription_addons
    ADD COLUMN merged_into bigint REFERENCES subscription_addons,
    ADD COLUMN merged_at timestamptz,
    ADD CONSTRAINT ck_subscription_addons_merged CHECK (merged_into IS NULL OR status = 'cancelled') NOT VALID;
CREATE INDEX ix_subscription_addons_merged_into ON subscription_addons (merged_into) WHERE merged_into IS NOT NULL;

-- Each subscription's credit limit as ProvisioningWork last derived it (a row: a limit applies).
CREATE TABLE subscription_credit_limits (
    subscription_id bigint PRIMARY KEY REFERENCES subscriptions ON DELETE CASCADE,
    customer_id bigint NOT NULL REFERENCES customers ON DELETE CASCADE,
    currency char(3) NOT NULL,
    customer_credit_limit numeric(14,2) NOT NULL,
    own_usage numeric(14,2) NOT NULL,                 -- this subscription's unpaid invoice lines
    other_usage numeric(14,2) NOT NULL,               -- the customer's other unpaid invoice lines
    credit_limit numeric(14,2) NOT NULL CHECK (credit_limit >= 0),
    synced_at timestamptz NOT NULL                    -- the run that last changed it
);
CREATE INDEX ix_subscription_credit_limits_customer ON subscription_credit_limits (customer_id);

-- Subscriptions on a CSP trial offer, and what became of the trial's end.
CREATE TABLE csp_trials (
    subscription_id bigint PRIMARY KEY REFERENCES subscriptions ON DELETE CASCADE,
    trial_ends_at timestamptz NOT NULL,
    converted_at timestamptz,                         -- converted to a paid offer: not suspended for the trial
    handled_at timestamptz,                           -- the run that acted on the expiry
    outcome text CHECK (outcome IN ('suspended', 'already_inactive')),
    outbox_key text,                                  -- the customer's notice (NULL: no usable address)
    backend_job_id bigint,                            -- the O365/CSP group-action job suspending it at Microsoft
    CHECK ((handled_at IS NULL) = (outcome IS NULL))
);
CREATE INDEX ix_csp_trials_due ON csp_trials (trial_ends_at) WHERE handled_at IS NULL AND converted_at IS NULL;

-- The recycle bin: deleted mailboxes, users and sites, kept until purge_at. A row is an item in the
-- bin; restoring or purging it removes the row (and its notices).
CREATE TABLE recycle_bin_items (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id bigint NOT NULL REFERENCES customers ON DELETE CASCADE,
    kind text NOT NULL CHECK (kind IN ('mailbox', 'user', 'site')),
    name text NOT NULL,
    deleted_at timestamptz NOT NULL,
    purge_at timestamptz NOT NULL,
    CHECK (purge_at > deleted_at)
);
CREATE INDEX ix_recycle_bin_items_purge ON recycle_bin_items (purge_at);

CREATE TABLE recycle_bin_notices (
    item_id bigint NOT NULL REFERENCES recycle_bin_items ON DELETE CASCADE,
    reminder smallint NOT NULL CHECK (reminder >= 0),
    sent_at timestamptz NOT NULL,                     -- the run's clock
    outbox_key text NOT NULL UNIQUE,
    PRIMARY KEY (item_id, reminder)
);

-- Distribution lists deleted from the panel, recoverable (definition: members, owners, settings)
-- until ProvisioningWork deletes them for good. A recovered list leaves the table.
CREATE TABLE recovery_distribution_lists (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id bigint NOT NULL REFERENCES customers ON DELETE CASCADE,
    name text NOT NULL,
    email_address text NOT NULL,
    definition jsonb NOT NULL DEFAULT '{{}}',
    deleted_at timestamptz NOT NULL
);
CREATE INDEX ix_recovery_distribution_lists_deleted_at ON recovery_distribution_lists (deleted_at);

CREATE TABLE recovery_notices (
    distribution_list_id bigint NOT NULL REFERENCES recovery_distribution_lists ON DELETE CASCADE,
    reminder smallint NOT NULL CHECK (reminder >= 0),
    sent_at timestamptz NOT NULL,
    outbox_key text NOT NULL UNIQUE,
    PRIMARY KEY (distribution_list_id, reminder)
);

-- Failure notices to the operators: a failed group-action job once per attempt; a service-queue order
-- once per run that finds new error entries for it (occurrence: the first of them), every error entry
-- in at most one notice.
CREATE TABLE failure_notices (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source text NOT NULL CHECK (source IN ('service_queue', 'group_action_job')),
    ref_id bigint NOT NULL,                           -- the order's id / the job's id
    occurrence bigint NOT NULL,                       -- the first error entry's id / the job's attempt
    failed_at timestamptz NOT NULL,
    error text,
    recipients text[] NOT NULL,
    noticed_at timestamptz NOT NULL,                  -- the run's clock
    UNIQUE (source, ref_id, occurrence)
);
CREATE INDEX ix_failure_notices_noticed_at ON failure_notices (noticed_at);

-- service_queue_logs ids: no foreign key, the logs are pruned after 90 days (the notices after that).
CREATE TABLE failure_notice_entries (
    log_id bigint PRIMARY KEY,
    notice_id bigint NOT NULL REFERENCES failure_notices ON DELETE CASCADE
);
CREATE INDEX ix_failure_notice_entries_notice ON failure_notice_entries (notice_id);

CREATE INDEX ix_service_queue_logs_errors ON service_queue_logs (logged_at) WHERE level = 'error';
CREATE INDEX ix_group_action_jobs_failed ON group_action_jobs ((coalesce(finished_at, created_at)))
    WHERE status = 'failed';
"""


def upgrade() -> None:
    op.execute(DDL)


DROP = """
DROP INDEX ix_group_action_jobs_failed, ix_service_queue_logs_errors;
DROP TABLE failure_notice_entries, failure_notices, recovery_notices, recovery_distribution_lists,
    recycle_bin_notices, recycle_bin_items, csp_trials, subscription_credit_limits, credentials, customer_contacts;
DROP INDEX ix_subscription_addons_merged_into;
ALTER TABLE subscription_addons DROP CONSTRAINT ck_subscription_addons_merged, DROP COLUMN merged_at,
    DROP COLUMN merged_into;
ALTER TABLE domains DROP COLUMN registrar_status_at, DROP COLUMN registrar_listed, DROP COLUMN registrar_expires_at,
    DROP COLUMN registrar_status, DROP COLUMN registrar_account_id;
DROP INDEX ix_customers_unverified;
ALTER TABLE customers DROP COLUMN credit_limit, DROP COLUMN email_verified_at, DROP COLUMN signed_up_at;
"""


def downgrade() -> None:
    op.execute(DROP)
