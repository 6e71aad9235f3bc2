"""Billing: provider → resellers → customers → subscriptions, and everything BillingWork writes.

Exactly-once lives here, not in the steps' good behaviour: an invoice is unique per customer,
billing day and kind; an invoice line per subscription (or add-on) and billing period; a credit
note per subscription and reason; a payment attempt per invoice and attempt number (its
idempotency key is what the gateway dedupes on); a commission per paid invoice; a voice bill
per subscriber and day; a SIP export task per subscription and day; a price notification per
customer and price-list day. Every step writes with ``ON CONFLICT DO NOTHING`` against these.

Money is ``numeric(14,2)`` in the invoice's currency; rates are ``numeric``. Subscriptions keep
``next_bill_date`` unindexed on purpose: the nightly scan is one sequential pass, and advancing
the date is then a HOT update — no index entries written — as long as the new row version fits
on its page. Every subscription on a page can be due the same night (a provider billing all on
the 1st), so ``fillfactor = 50`` leaves room for a new version of each; at 80 only about a
quarter of such an update stayed HOT and the rest paid two index insertions each.
"""
from alembic import op

revision = "0006"
down_revision = "0005"

MONEY = "numeric(14,2)"


def _calls(table: str, caller: str) -> str:
    """OCS and SIP calls are rated and billed alike, so both sources keep the same columns."""
    return f"""CREATE TABLE {table} (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subscription_id bigint NOT NULL REFERENCES subscriptions,
    {caller} text NOT NULL,
    destination text NOT NULL,                        -- E.164 digits
    started_at timestamptz NOT NULL,
    duration_seconds integer NOT NULL
);
CREATE INDEX ix_{table}_started ON {table} (started_at);"""


DDL = f"""
CREATE TABLE currencies (
    code char(3) PRIMARY KEY CHECK (code ~ '^[A-Z]{{3}}$'),
    name text NOT NULL,
    minor_units smallint NOT NULL DEFAULT 2
);

CREATE TABLE providers (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL,
    billing_email text NOT NULL,
    currency char(3) NOT NULL REFERENCES currencies
);

CREATE TABLE resellers (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    provider_id bigint NOT NULL REFERENCES providers,
    name text NOT NULL,
    email text NOT NULL,
    commission_based boolean NOT NULL DEFAULT false,
    commission_rate numeric(6,4) NOT NULL DEFAULT 0 CHECK (commission_rate BETWEEN 0 AND 1),
    status text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended', 'closed'))
);

-- A tax rate belongs to the provider or to one reseller (that reseller's customers are taxed by it).
CREATE TABLE tax_rates (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    provider_id bigint REFERENCES providers,
    reseller_id bigint REFERENCES resellers,
    country char(2) NOT NULL,
    name text NOT NULL,
    rate numeric(6,4) NOT NULL CHECK (rate BETWEEN 0 AND 1),
    copied_from bigint REFERENCES tax_rates,
    CHECK ((provider_id IS NULL) <> (reseller_id IS NULL))
);
CREATE UNIQUE INDEX ux_tax_rates_provider ON tax_rates (provider_id, country) WHERE reseller_id IS NULL;
CREATE UNIQUE INDEX ux_tax_rates_reseller ON tax_rates (reseller_id, country) WHERE provider_id IS NULL;

CREATE TABLE customers (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    provider_id bigint NOT NULL REFERENCES providers,
    reseller_id bigint REFERENCES resellers,          -- NULL: a direct customer of the provider
    name text NOT NULL,
    email text,
    country char(2) NOT NULL,
    currency char(3) NOT NULL,                        -- not a foreign key: the panel accepts any code; billing checks it
    status text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended', 'closed'))
);
CREATE INDEX ix_customers_reseller ON customers (reseller_id);

-- Gateway tokens only: the card itself stays with the gateway.
CREATE TABLE payment_profiles (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id bigint NOT NULL REFERENCES customers,
    gateway_token text NOT NULL UNIQUE,
    card_brand text,
    card_last4 char(4) CHECK (card_last4 ~ '^[0-9]{{4}}$'),
    is_default boolean NOT NULL DEFAULT true,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX ux_payment_profiles_default ON payment_profiles (customer_id) WHERE is_default;

CREATE TABLE subscriptions (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id bigint NOT NULL REFERENCES customers,
    plan text NOT NULL,
    price {MONEY},                                    -- NULL: not priced yet; billing reports and skips it
    currency char(3) NOT NULL,
    quantity integer NOT NULL DEFAULT 1 CHECK (quantity > 0),
    billing_cycle text NOT NULL CHECK (billing_cycle IN ('monthly', 'quarterly', 'yearly')),
    next_bill_date date NOT NULL,
    deferred_billing boolean NOT NULL DEFAULT false,
    status text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended', 'cancelled')),
    o365_offer_id text,
    started_on date NOT NULL
) WITH (fillfactor = 50);
CREATE INDEX ix_subscriptions_customer ON subscriptions (customer_id);
CREATE INDEX ix_subscriptions_o365_offer ON subscriptions (o365_offer_id) WHERE o365_offer_id IS NOT NULL;

CREATE TABLE subscription_addons (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subscription_id bigint NOT NULL REFERENCES subscriptions,
    name text NOT NULL,
    price {MONEY} NOT NULL,
    quantity integer NOT NULL DEFAULT 1 CHECK (quantity > 0),
    status text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'cancelled'))
);
CREATE INDEX ix_subscription_addons_subscription ON subscription_addons (subscription_id);

CREATE TABLE invoices (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    invoice_number text NOT NULL UNIQUE,
    customer_id bigint NOT NULL REFERENCES customers,
    reseller_id bigint REFERENCES resellers,
    kind text NOT NULL DEFAULT 'recurring' CHECK (kind IN ('recurring', 'ocs', 'sip')),
    billing_date date NOT NULL,                       -- the billing day (the run's data interval) it belongs to
    currency char(3) NOT NULL,
    subtotal {MONEY} NOT NULL DEFAULT 0,
    tax {MONEY} NOT NULL DEFAULT 0,
    credit {MONEY} NOT NULL DEFAULT 0,
    total {MONEY} NOT NULL DEFAULT 0,
    status text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'paid', 'payment_declined', 'void')),
    due_date date NOT NULL,
    paid_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (customer_id, billing_date, kind)
);
CREATE INDEX ix_invoices_billing_date ON invoices (billing_date, kind);
CREATE INDEX ix_invoices_open ON invoices (due_date) WHERE status = 'open';

-- Keyed by what it bills, not by a serial: one line per subscription (or add-on), kind and
-- billing period, whichever run or retry writes it.
-- invoice_id is deliberately not a foreign key: lines are only ever written by the statement that
-- writes their invoice (BillingWork's recurring invoices, the OCS/SIP voice bills), from the ids
-- that statement inserts, and invoices are never deleted; a per-row check would cost the nightly
-- run more than writing the line itself.
CREATE TABLE invoice_lines (
    invoice_id bigint NOT NULL,
    kind text NOT NULL CHECK (kind IN ('subscription', 'addon', 'credit', 'ocs_calls', 'sip_usage')),
    subscription_id bigint NOT NULL,
    addon_id bigint NOT NULL DEFAULT 0,               -- 0 for lines that are not an add-on's
    description text NOT NULL,
    period_start date NOT NULL,
    period_end date NOT NULL,                         -- exclusive
    quantity numeric(14,4) NOT NULL,
    unit_price numeric(14,4) NOT NULL,
    amount {MONEY} NOT NULL,
    tax_rate numeric(6,4) NOT NULL DEFAULT 0,
    tax_amount {MONEY} NOT NULL DEFAULT 0,
    PRIMARY KEY (subscription_id, addon_id, kind, period_start)
);
CREATE INDEX ix_invoice_lines_invoice ON invoice_lines (invoice_id);

CREATE TABLE credit_notes (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id bigint NOT NULL REFERENCES customers,
    subscription_id bigint NOT NULL REFERENCES subscriptions,
    invoice_id bigint,                                -- not a foreign key: written with its invoice (see invoice_lines)
    reason text NOT NULL,
    days integer NOT NULL,
    amount {MONEY} NOT NULL CHECK (amount >= 0),
    currency char(3) NOT NULL,
    issued_on date NOT NULL,
    UNIQUE (subscription_id, reason)
);

CREATE TABLE payment_attempts (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    invoice_id bigint NOT NULL REFERENCES invoices,
    attempt integer NOT NULL CHECK (attempt > 0),
    idempotency_key text NOT NULL UNIQUE,
    payment_profile_id bigint NOT NULL REFERENCES payment_profiles,
    amount {MONEY} NOT NULL,
    currency char(3) NOT NULL,
    status text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'approved', 'declined', 'error')),
    gateway_charge_id text,
    gateway_code text,
    gateway_message text,
    requests integer NOT NULL DEFAULT 0,              -- HTTP calls made with this key (timeouts resend it)
    created_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    UNIQUE (invoice_id, attempt)
);

CREATE TABLE payments (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    invoice_id bigint NOT NULL UNIQUE REFERENCES invoices,   -- one settled charge per invoice
    payment_attempt_id bigint NOT NULL UNIQUE REFERENCES payment_attempts,
    amount {MONEY} NOT NULL,
    currency char(3) NOT NULL,
    gateway_charge_id text NOT NULL UNIQUE,
    paid_on date NOT NULL
);

CREATE TABLE reseller_commissions (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    reseller_id bigint NOT NULL REFERENCES resellers,
    invoice_id bigint NOT NULL UNIQUE REFERENCES invoices,   -- a paid invoice earns commission once
    period_date date NOT NULL,                               -- the billing day whose run recorded it
    base_amount {MONEY} NOT NULL,
    rate numeric(6,4) NOT NULL,
    amount {MONEY} NOT NULL,
    currency char(3) NOT NULL
);
CREATE INDEX ix_reseller_commissions_period ON reseller_commissions (reseller_id, period_date);

-- Voice: OCS/Lync call records and SIP usage, rated by longest destination prefix.
CREATE TABLE voice_rates (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    rate_table text NOT NULL CHECK (rate_table IN ('ocs', 'sip')),
    prefix text NOT NULL CHECK (prefix ~ '^[0-9]*$'),
    description text NOT NULL,
    currency char(3) NOT NULL,
    per_minute numeric(12,5) NOT NULL CHECK (per_minute >= 0),
    connection_fee numeric(12,5) NOT NULL DEFAULT 0,
    UNIQUE (rate_table, currency, prefix)
);

-- ocs_call_records.caller: the Lync user's SIP URI.
{_calls("ocs_call_records", "caller")}
{_calls("sip_usage", "sip_account")}

CREATE TABLE sip_export_tasks (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subscription_id bigint NOT NULL REFERENCES subscriptions,
    invoice_id bigint NOT NULL REFERENCES invoices,
    period_date date NOT NULL,
    status text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'exported', 'failed')),
    payload jsonb NOT NULL,
    UNIQUE (subscription_id, period_date)
);

-- O365: Microsoft's price list as imported, the changes found, one notice per customer and day.
CREATE TABLE o365_price_lists (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    offer_id text NOT NULL,
    offer_name text NOT NULL,
    currency char(3) NOT NULL,
    unit_price numeric(14,4) NOT NULL,
    effective_from date NOT NULL,
    published_on date NOT NULL,
    UNIQUE (offer_id, currency, effective_from)
);
CREATE INDEX ix_o365_price_lists_published ON o365_price_lists (published_on);

CREATE TABLE o365_price_notifications (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id bigint NOT NULL REFERENCES customers,
    published_on date NOT NULL,
    changes jsonb NOT NULL,
    outbox_key text NOT NULL,
    UNIQUE (customer_id, published_on)
);

-- Files sent with an outbox message (invoice PDFs), stored with it: what is sent is what was queued.
CREATE TABLE email_outbox_attachments (
    outbox_id bigint NOT NULL REFERENCES email_outbox ON DELETE CASCADE,
    filename text NOT NULL,
    content_type text NOT NULL,
    content bytea NOT NULL,
    PRIMARY KEY (outbox_id, filename)
);

-- OCS bills per subscriber and day (ProvisioningWork prunes old ones): the call-record bill.
ALTER TABLE voice_bill_records ADD COLUMN subscription_id bigint, ADD COLUMN bill_date date,
    ADD COLUMN calls integer, ADD COLUMN invoice_id bigint;
CREATE UNIQUE INDEX ux_voice_bill_records_day ON voice_bill_records (subscription_id, subscriber, bill_date)
    WHERE bill_date IS NOT NULL;
"""


def upgrade() -> None:
    op.execute(DDL)


DROP = """
DROP INDEX ux_voice_bill_records_day;
ALTER TABLE voice_bill_records DROP COLUMN subscription_id, DROP COLUMN bill_date, DROP COLUMN calls,
    DROP COLUMN invoice_id;
DROP TABLE email_outbox_attachments, o365_price_notifications, o365_price_lists, sip_export_tasks, sip_usage, ocs_call_records, voice_rates,
    reseller_commissions, payments, payment_attempts, credit_notes, invoice_lines, invoices, subscription_addons,
    subscriptions, payment_profiles, customers, tax_rates, resellers, providers, currencies;
"""


def downgrade() -> None:
    op.execute(DROP)
