"""The panel's licence and its alerts; Ingram Micro subscription cancellations.

**Licence** (LicenseWork): the installation runs under a licence its vendor signs with Ed25519.
The vendor's public key is pinned in the ``licence_vendor`` connection; a licence document (from
the licence file the connection names, or fetched from the vendor over HTTPS) is stored only once
its signature verified against that key, so a tampered file never replaces a good licence.

- ``panel_licences``: every verified licence document, written by LicenseWork. ``payload`` is the
  signed bytes exactly as received (base64) with their ``signature``, so any row can be verified
  again; the rest are the payload's fields, for queries. The licence in force at a clock is the
  row valid then with the latest ``issued_at``. ``UNIQUE (licence_id, issued_at)``: the same
  document read again (every run reads the file) is one row.
- ``licence_alerts``: one row per unit (mailboxes, users, VMs, tenants), threshold (90 %, 100 %)
  and licence period (``licence_id`` + ``valid_from``), written by LicenseWork in the transaction
  that queues its e-mail — the unique key makes "once per threshold and period" hold through
  reruns, retries and backfills; a renewed licence (a new period) alerts again.

**Ingram Micro** (IngramCancelNoticesWork):

- ``ingram_subscriptions``: a panel subscription bought through Ingram Micro's reseller API. Its
  writer is the panel's provisioning of Ingram products: when an Ingram order for a customer's
  subscription is placed it records the reseller account (``conn_id``, the Airflow connection of
  that Ingram customer number), Ingram's subscription id and the sales order number it was bought
  under, the current term's end (``renewal_date``) and the vendor's notice window (how many days
  before the renewal a cancellation must reach Ingram). The same writer moves ``renewal_date`` on
  when a term renews.
- ``ingram_cancellations``: a cancellation the panel requested. Its writer is the panel's
  subscription page (a customer or an operator asks to cancel at the end of the term): it inserts
  ``requested`` with the term it ends (``term_end`` = the subscription's ``renewal_date`` then),
  who asked and whom to tell. IngramCancelNoticesWork submits it once the notice window has
  opened and before the term ends, exactly once: ``correlation_id`` (the ``IM-CorrelationID`` sent)
  is stored and committed as ``submitting`` BEFORE the request goes out, so a lost answer is
  reconciled by reading the order back, never by a blind second cancel. It ends ``cancelled``,
  ``refused`` (Ingram said no; ``last_error`` says why) or ``missed`` (the term ended first), and
  one e-mail is queued per cancellation in the same transaction (``notice_queued_at``).
  ``UNIQUE (ingram_subscription_id, term_end)``: one cancellation per subscription term.
"""
from alembic import op

revision = "0032"
down_revision = "0031"

DDL = """
CREATE TABLE panel_licences (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    licence_id text NOT NULL,
    issued_at timestamptz NOT NULL,
    licensee text NOT NULL,
    installation_id text,                              -- NULL: not bound to one installation
    valid_from timestamptz NOT NULL,
    valid_until timestamptz NOT NULL,
    units jsonb NOT NULL,                              -- {"mailboxes": 500, "users": 1000, "vms": 50, "tenants": 20}
    payload text NOT NULL,                             -- the signed bytes, base64, as received
    signature text NOT NULL,                           -- Ed25519 over payload's bytes, base64
    key_fingerprint text NOT NULL,                     -- sha256 of the raw public key that verified it
    source text NOT NULL CHECK (source IN ('file', 'vendor')),
    stored_at timestamptz NOT NULL,                    -- the run (its clock) that verified and stored it
    UNIQUE (licence_id, issued_at),
    CHECK (valid_from < valid_until),
    CHECK (jsonb_typeof(units) = 'object')
);
CREATE INDEX ix_panel_licences_current ON panel_licences (valid_from, issued_at DESC);

CREATE TABLE licence_alerts (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    licence_id text NOT NULL,
    valid_from timestamptz NOT NULL,                   -- with licence_id: the licence period
    unit text NOT NULL CHECK (unit IN ('mailboxes', 'users', 'vms', 'tenants')),
    threshold smallint NOT NULL CHECK (threshold IN (90, 100)),
    used integer NOT NULL CHECK (used >= 0),
    licensed integer NOT NULL CHECK (licensed > 0),
    to_address text NOT NULL,
    raised_at timestamptz NOT NULL,
    UNIQUE (licence_id, valid_from, unit, threshold)
);

CREATE TABLE ingram_subscriptions (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subscription_id bigint NOT NULL UNIQUE REFERENCES subscriptions,
    customer_id bigint NOT NULL REFERENCES customers,
    conn_id text NOT NULL DEFAULT 'ingram',            -- the Ingram reseller account's Airflow connection
    ingram_subscription_id text NOT NULL,
    ingram_order_number text NOT NULL,                 -- the sales order it was bought under ("20-RD128")
    product text,
    renewal_date date NOT NULL,                        -- the current term's end
    notice_window_days smallint NOT NULL DEFAULT 30 CHECK (notice_window_days BETWEEN 1 AND 365),
    status text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'cancelled')),
    UNIQUE (conn_id, ingram_subscription_id)
);

CREATE TABLE ingram_cancellations (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ingram_subscription_id bigint NOT NULL REFERENCES ingram_subscriptions,
    term_end date NOT NULL,                            -- the renewal it prevents
    requested_at timestamptz NOT NULL,
    requested_by text NOT NULL,                        -- the panel login that asked
    notify_email text,                                 -- whom to tell; NULL: the customer's address
    reason text,
    status text NOT NULL DEFAULT 'requested'
        CHECK (status IN ('requested', 'submitting', 'cancelled', 'refused', 'missed', 'withdrawn')),
    correlation_id text UNIQUE,                        -- IM-CorrelationID, committed before the request
    attempts integer NOT NULL DEFAULT 0,
    submitted_at timestamptz,                          -- the run that first sent it
    completed_at timestamptz,                          -- the run that settled it
    ingram_status text,                                -- the order's status as Ingram last gave it
    last_error text,
    notice_queued_at timestamptz,
    UNIQUE (ingram_subscription_id, term_end),
    CHECK (status IN ('requested', 'withdrawn', 'missed') OR correlation_id IS NOT NULL),
    CHECK ((status IN ('cancelled', 'refused', 'missed')) = (completed_at IS NOT NULL))
);
CREATE INDEX ix_ingram_cancellations_open ON ingram_cancellations (term_end, id)
    WHERE status IN ('requested', 'submitting');
"""

DROP = "DROP TABLE ingram_cancellations, ingram_subscriptions, licence_alerts, panel_licences;"


def upgrade() -> None:
    op.execute(DDL)


def downgrade() -> None:
    op.execute(DROP)
