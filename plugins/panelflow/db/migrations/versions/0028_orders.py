"""Orders: the service queue, order jobs, activation and pay-per-use rating (ProvisioningWork 1, 22, 21).

From order to invoice (``panelflow.steps.orders``):

- ``service_orders`` / ``service_order_items``: **the panel's interface**. The panel (a documented
  panel-side writer) inserts an order (``placed``) and its items *in one transaction*, and may set a
  ``placed`` order ``cancelled``; panelflow writes everything else. An item is one group action: a
  ``backend`` and ``action`` of the group-action queue and a ``payload`` *template* (a JSON object
  whose string values ``"{{customer_id}}"``, ``"{{order_id}}"``, ``"{{subscription_id}}"`` or
  ``"{{result:<position>.<key>}}"`` — a key of a dependency's job result — are replaced, type kept),
  the ``subscription_id`` it provisions (NULL: none), its ``position`` in the order and the
  positions it ``depends_on`` (each lower than its own, so there is no cycle). A subscription an
  order provisions is written by the panel as ``pending`` (see below).
- ProvisioningWork 1 queues an item's job once every dependency succeeded: the job (its id taken
  from the queue's sequence) and the item's ``job_id``/``queued`` state are written by one
  statement, and ``job_id`` is UNIQUE, so a run killed at any point leaves either both or neither
  and a retry never queues an item twice. A secret (``password`` …) leaves the item's template once
  it is in the job (the queue drops it from the job when the job ends), or once the item failed or
  was cancelled without one. It then settles each queued item from its job's outcome
  (``succeeded``/``failed``, the job's result or error copied: later items' templates read the
  result), fails the order with the backend's reason at the first failed item (``error``; items
  not queued yet are ``cancelled``) and moves it ``placed`` → ``provisioning`` when its first job
  is queued. ``job_id`` references the job: a job of an order is never deleted under it.
- ``service_queue_logs`` (0001) gains ``event``: every log line panelflow writes names the event
  (``queued:<position>``, ``succeeded:<position>``, ``failed:<position>``, ``order_failed``,
  ``provisioned``), UNIQUE per order, so an event is logged once whatever reruns.
  ProvisioningWork 29 notices the ``error`` lines, step 7 deletes lines after 90 days; older lines
  (the demo's) keep NULL.
- ProvisioningWork 22 moves an order whose items all succeeded to ``provisioned`` and activates
  its ``pending`` subscriptions: ``started_on`` and the first ``next_bill_date`` are the activation
  day. BillingWork bills a period in advance from its bill date, anchored on ``started_on``, so the
  first invoice is on the activation day for ``[day, day + one billing cycle)``. ``subscriptions``
  therefore gains the status ``pending`` (not billed, not counted, not yet started), whose two
  dates may be NULL; every other status keeps them NOT NULL (a CHECK). A downgrade needs no
  pending subscription left.

Pay-per-use (ProvisioningWork 21):

- ``ppu_rates``: the panel's price list for usage (a documented panel-side writer), per plan,
  resource and currency, from ``valid_from`` (a new price is a new row; history is kept, so a
  backfill rates an old day at that day's price). ``per_units`` is how many measured units one
  priced unit is (1024: a price per GB of a resource sampled in MB). ``resource`` is a
  ``quota_resources`` code (usage samples, 0009) or ``voice_minutes`` (call minutes over a voice
  bundle, ``voice_bundle_usage`` 0022).
- ``ppu_charges``: one row per usage record rated — a subscription's resource on one day (its
  peak sample over the quota), or a subscription's voice bundle month (minutes over the bundle) —
  UNIQUE on ``(subscription_id, resource, period_start)``: a rerun or backfill rates a record
  once. It keeps what it was rated from (used, included, the rate) and the invoice it went on.
- ``ppu_rated_days``: a day rated (and its next-day invoices written), claimed by the transaction
  that does it, so the runs after it — every 10-minute run of the next day covers it — skip it
  instead of reading the day's samples again. A backfill with ``ppu_rerate`` reads a day again;
  the charges' key still rates each record once. ``resource_usage_samples`` gains a BRIN index on
  ``sampled_at`` for that once-a-day read (BRIN: tiny, and cheap for the collectors' appends).
- A charge is invoiced on the **next billing day** after its usage period ends: a ``ppu``
  invoice per customer and day (``invoices.kind`` gains ``ppu``), one ``ppu`` line per
  subscription (``invoice_lines.kind`` gains ``ppu``; the line's period is the day before its
  billing day, the charges name their own periods). A separate invoice, as OCS and SIP calls
  have, because BillingWork's recurring invoice is final once written: a charge rated after its
  customer's invoice of the day waits for the next day's. ``invoice_id`` is not a foreign key,
  as in ``invoice_lines`` (0006): written by the statement that writes the invoice.

No Partner Center / Azure usage lines table exists (``csp_licence_usage`` is a licence count,
not metered usage), so Azure consumption is not rated here.
"""
from alembic import op

revision = "0028"
down_revision = "0027"

DDL = r"""
CREATE TABLE service_orders (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id bigint NOT NULL REFERENCES customers,
    status text NOT NULL DEFAULT 'placed'
        CHECK (status IN ('placed', 'provisioning', 'provisioned', 'failed', 'cancelled')),
    placed_at timestamptz NOT NULL,
    note text,                                        -- the panel's words (what was ordered)
    started_at timestamptz,                           -- the clock of the run that queued its first job
    finished_at timestamptz,                          -- provisioned or failed: that run's clock
    error text,                                       -- why it failed (the backend's reason)
    CHECK ((status = 'failed') = (error IS NOT NULL)),
    CHECK ((status IN ('provisioned', 'failed')) = (finished_at IS NOT NULL))
);
CREATE INDEX ix_service_orders_open ON service_orders (placed_at, id) WHERE status IN ('placed', 'provisioning');
CREATE INDEX ix_service_orders_customer ON service_orders (customer_id);

CREATE TABLE service_order_items (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    order_id bigint NOT NULL REFERENCES service_orders ON DELETE CASCADE,
    position integer NOT NULL CHECK (position > 0),
    depends_on integer[] NOT NULL DEFAULT '{}' CHECK (position > ALL (depends_on)),
    backend text NOT NULL,                            -- a group-action backend (checked by the step)
    action text NOT NULL,
    payload jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(payload) = 'object'),   -- the template
    priority smallint NOT NULL DEFAULT 5 CHECK (priority BETWEEN 0 AND 10),
    subscription_id bigint REFERENCES subscriptions,  -- the subscription it provisions; NULL: none
    state text NOT NULL DEFAULT 'waiting'
        CHECK (state IN ('waiting', 'queued', 'succeeded', 'failed', 'cancelled')),
    job_id bigint UNIQUE REFERENCES group_action_jobs, -- one job per item, ever
    queued_at timestamptz,
    finished_at timestamptz,
    result jsonb,                                     -- the job's result once it succeeded
    error text,
    UNIQUE (order_id, position),
    CHECK (CASE state WHEN 'waiting' THEN job_id IS NULL WHEN 'cancelled' THEN job_id IS NULL
                      WHEN 'queued' THEN job_id IS NOT NULL WHEN 'succeeded' THEN job_id IS NOT NULL
                      ELSE true END)
);
CREATE INDEX ix_service_order_items_queued ON service_order_items (id) WHERE state = 'queued';
CREATE INDEX ix_service_order_items_subscription ON service_order_items (subscription_id)
    WHERE subscription_id IS NOT NULL;

ALTER TABLE service_queue_logs ADD COLUMN event text;
CREATE UNIQUE INDEX ux_service_queue_logs_event ON service_queue_logs (order_id, event) WHERE event IS NOT NULL;

ALTER TABLE subscriptions DROP CONSTRAINT subscriptions_status_check,
    ADD CONSTRAINT subscriptions_status_check CHECK (status IN ('pending', 'active', 'suspended', 'cancelled')),
    ALTER COLUMN started_on DROP NOT NULL, ALTER COLUMN next_bill_date DROP NOT NULL,
    ADD CONSTRAINT ck_subscriptions_started
        CHECK (status = 'pending' OR (started_on IS NOT NULL AND next_bill_date IS NOT NULL));

CREATE TABLE ppu_rates (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    plan text NOT NULL,
    resource text NOT NULL,                           -- a quota_resources code, or 'voice_minutes'
    currency char(3) NOT NULL,
    unit_price numeric(14,6) NOT NULL CHECK (unit_price >= 0),
    per_units numeric NOT NULL DEFAULT 1 CHECK (per_units > 0),
    valid_from date NOT NULL,
    UNIQUE (plan, resource, currency, valid_from)
);

CREATE TABLE ppu_charges (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source text NOT NULL CHECK (source IN ('usage_sample', 'voice_bundle')),
    subscription_id bigint NOT NULL REFERENCES subscriptions,
    customer_id bigint NOT NULL REFERENCES customers,
    resource text NOT NULL,
    period_start date NOT NULL,                       -- the usage's period (a day, a bundle month)
    period_end date NOT NULL,                         -- exclusive
    used numeric NOT NULL,                            -- peak sample / minutes used
    included numeric NOT NULL,                        -- the quota / the bundle's minutes
    quantity numeric NOT NULL CHECK (quantity > 0),   -- priced units over what is included
    rate_id bigint NOT NULL REFERENCES ppu_rates,
    unit_price numeric(14,6) NOT NULL,
    amount numeric(14,4) NOT NULL,
    currency char(3) NOT NULL,
    rated_at timestamptz NOT NULL,                    -- the clock of the run that rated it
    invoice_id bigint,                                -- not a foreign key: see the docstring
    billing_date date,
    UNIQUE (subscription_id, resource, period_start),
    CHECK (period_end > period_start),
    CHECK ((invoice_id IS NULL) = (billing_date IS NULL))
);
-- One row per day rated, written by the transaction that rated and invoiced it: the day's claim.
CREATE TABLE ppu_rated_days (
    day date PRIMARY KEY,
    rated_at timestamptz NOT NULL,                    -- the clock of the run that rated it
    records integer NOT NULL,
    invoices integer NOT NULL
);

-- The day's samples for the rating (once a day); BRIN: the table is appended to in time order.
CREATE INDEX ix_resource_usage_samples_sampled ON resource_usage_samples USING brin (sampled_at);

CREATE INDEX ix_ppu_charges_uninvoiced ON ppu_charges (period_end, customer_id) WHERE invoice_id IS NULL;
CREATE INDEX ix_ppu_charges_invoice ON ppu_charges (invoice_id) WHERE invoice_id IS NOT NULL;

ALTER TABLE invoices DROP CONSTRAINT invoices_kind_check,
    ADD CONSTRAINT invoices_kind_check CHECK (kind IN ('recurring', 'ocs', 'sip', 'ppu'));
ALTER TABLE invoice_lines DROP CONSTRAINT invoice_lines_kind_check,
    ADD CONSTRAINT invoice_lines_kind_check
        CHECK (kind IN ('subscription', 'addon', 'credit', 'ocs_calls', 'sip_usage', 'ppu'));
"""


def upgrade() -> None:
    op.execute(DDL)


DROP = """
ALTER TABLE invoice_lines DROP CONSTRAINT invoice_lines_kind_check,
    ADD CONSTRAINT invoice_lines_kind_check
        CHECK (kind IN ('subscription', 'addon', 'credit', 'ocs_calls', 'sip_usage'));
ALTER TABLE invoices DROP CONSTRAINT invoices_kind_check,
    ADD CONSTRAINT invoices_kind_check CHECK (kind IN ('recurring', 'ocs', 'sip'));
DROP INDEX ix_resource_usage_samples_sampled;
DROP TABLE ppu_rated_days, ppu_charges, ppu_rates;
ALTER TABLE subscriptions DROP CONSTRAINT ck_subscriptions_started,
    ALTER COLUMN started_on SET NOT NULL, ALTER COLUMN next_bill_date SET NOT NULL,
    DROP CONSTRAINT subscriptions_status_check,
    ADD CONSTRAINT subscriptions_status_check CHECK (status IN ('active', 'suspended', 'cancelled'));
DROP INDEX ux_service_queue_logs_event;
ALTER TABLE service_queue_logs DROP COLUMN event;
DROP TABLE service_order_items, service_orders;
"""


def downgrade() -> None:
    op.execute(DROP)
