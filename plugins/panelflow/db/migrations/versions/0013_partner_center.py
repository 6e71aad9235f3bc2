"""Partner Center and Azure: CSP profiles and offers, O365 subscriptions as Partner Center reports them and reconciliation differences, O365/CSP group actions, Azure retail prices (ReconciliateO365SubsWork, SyncCSPOffers, Office365Work, AzureRateWork).

- ``csp_profiles``: one Partner Center account (partner tenant) each, naming the Airflow connection
  that holds its app's credentials — no secrets in tables — the market its offers are read for
  and the licence-usage percentage that raises an alert; ``csp_profile_syncs``: per profile and
  task, when it was last tried, last synced and the last error (a failing profile is visible);
- ``csp_offers``: each profile's offer catalogue as last read (``listed = false``: the last
  complete read no longer had it);
- ``csp_customers``: the profile's customers (tenants) as Partner Center lists them;
  ``customer_id`` is the panel's customer of that tenant (the panel sets it; NULL: a tenant the
  panel does not know);
- ``o365_subscriptions``: Partner Center's subscriptions, linked to the panel's subscription they
  provide (``panel_subscription_id``, unique: one each way);
- ``o365_subscription_renewals``: what became of each term's end — renewed (to a new end) or
  expired — once per subscription and term end;
- ``o365_orders``: the panel's queue of O365 subscriptions to provision (the panel inserts a row);
  one per panel subscription, its ``MS-RequestId`` derived from the subscription and ``attempt``
  and the ordered offer/quantity kept from the first try, so a resend is the same request and
  Partner Center places it once;
- ``csp_licence_usage``: each tenant's licences (subscribed SKUs: active vs consumed units) as last
  read; ``csp_licence_alerts``: one row per crossing of the profile's threshold, from the run that
  finds it over until the run that finds it under (at most one open per tenant and SKU);
- ``o365_subscription_reconciliations`` (0001) gains the kind of difference, the profile and the
  panel subscription: one row per subscription, difference kind and run (unique);
- ``azure_rates`` (0001) gains the Retail Prices API's fields; its prices are kept per meter, SKU,
  price type, reservation term, tier and effective date (``source = 'retail_prices'``; a new
  effective date is a new row, history kept). ``unit_price`` loses its fixed scale (prices have
  more than 8 decimals); changing a typmod to unconstrained ``numeric`` rewrites nothing.
"""
from alembic import op

from panelflow.db.ddl import ALERT_EPISODE, alert_episode_indexes, conn_id_check

revision = "0013"
down_revision = "0012"

DDL = f"""
CREATE TABLE csp_profiles (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL UNIQUE,
    conn_id text NOT NULL UNIQUE {conn_id_check("conn_id")},  -- the Airflow connection (type panelflow_partner_center)
    country char(2) NOT NULL DEFAULT 'GB' CHECK (country ~ '^[A-Z]{{2}}$'),  -- the market offers are read for
    licence_alert_percent smallint NOT NULL DEFAULT 90 CHECK (licence_alert_percent BETWEEN 1 AND 100),
    enabled boolean NOT NULL DEFAULT true
);

CREATE TABLE csp_profile_syncs (
    profile_id bigint NOT NULL REFERENCES csp_profiles ON DELETE CASCADE,
    task text NOT NULL CHECK (task IN ('offers', 'reconciliation', 'renewals', 'orders', 'licence_usage')),
    last_attempt_at timestamptz NOT NULL,            -- interval end of the last run that tried it
    last_synced_at timestamptz,                      -- … that completed it
    last_error text,
    PRIMARY KEY (profile_id, task)
);

CREATE TABLE csp_offers (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    profile_id bigint NOT NULL REFERENCES csp_profiles ON DELETE CASCADE,
    offer_id text NOT NULL,
    name text NOT NULL,
    description text,
    category text,
    product_id text,
    product_name text,
    unit_type text,
    billing text,
    min_quantity integer,
    max_quantity integer,
    is_trial boolean,
    is_addon boolean,
    is_auto_renewable boolean,
    available_for_purchase boolean,
    billing_cycles text[] NOT NULL DEFAULT '{{}}',
    prerequisite_offers text[] NOT NULL DEFAULT '{{}}',
    country text,
    locale text,
    listed boolean NOT NULL DEFAULT true,
    first_seen_at timestamptz NOT NULL,
    changed_at timestamptz NOT NULL,                 -- interval end of the run that last found a difference
    UNIQUE (profile_id, offer_id)
);

CREATE TABLE csp_customers (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    profile_id bigint NOT NULL REFERENCES csp_profiles ON DELETE CASCADE,
    tenant_id text NOT NULL CHECK (tenant_id = lower(tenant_id)),  -- Partner Center's customer id
    customer_id bigint REFERENCES customers ON DELETE SET NULL,
    company_name text,
    domain text,
    relationship text,
    listed boolean NOT NULL DEFAULT true,
    first_seen_at timestamptz NOT NULL,
    synced_at timestamptz,                           -- the last reconciliation that read its subscriptions
    usage_read_at timestamptz,                       -- the last run that read its licence usage
    usage_error text,
    UNIQUE (profile_id, tenant_id)
);
CREATE UNIQUE INDEX ux_csp_customers_customer ON csp_customers (customer_id) WHERE customer_id IS NOT NULL;
CREATE INDEX ix_csp_customers_usage_due ON csp_customers (usage_read_at NULLS FIRST, id)
    WHERE customer_id IS NOT NULL AND listed;

CREATE TABLE o365_subscriptions (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    csp_customer_id bigint NOT NULL REFERENCES csp_customers ON DELETE CASCADE,
    subscription_id text NOT NULL UNIQUE CHECK (subscription_id = lower(subscription_id)),
    panel_subscription_id bigint UNIQUE REFERENCES subscriptions ON DELETE SET NULL,
    offer_id text NOT NULL,
    offer_name text,
    friendly_name text,
    quantity integer NOT NULL CHECK (quantity >= 0),
    unit_type text,
    status text NOT NULL,                            -- Partner Center's: active, suspended, deleted, expired, pending …
    auto_renew boolean,
    billing_cycle text,
    term_duration text,
    creation_date timestamptz,
    effective_start_date date,
    commitment_end_date date,
    is_trial boolean,
    order_id text,
    listed boolean NOT NULL DEFAULT true,            -- false: the last complete read no longer had it
    first_seen_at timestamptz NOT NULL,
    changed_at timestamptz NOT NULL,
    renewal_checked_at timestamptz                   -- the run that last asked Partner Center about its term's end
);
CREATE INDEX ix_o365_subscriptions_customer ON o365_subscriptions (csp_customer_id);
CREATE INDEX ix_o365_subscriptions_term_end ON o365_subscriptions (commitment_end_date)
    WHERE listed AND status = 'active';

CREATE TABLE o365_subscription_renewals (
    o365_subscription_id bigint NOT NULL REFERENCES o365_subscriptions ON DELETE CASCADE,
    term_end date NOT NULL,                          -- the end of the term Partner Center acted on
    outcome text NOT NULL CHECK (outcome IN ('renewed', 'expired')),
    new_term_end date,
    status text NOT NULL,                            -- Partner Center's status after it
    panel_subscription_id bigint,
    panel_cancelled boolean NOT NULL DEFAULT false,  -- the panel's subscription was cancelled with it
    noted_at timestamptz NOT NULL,                   -- the run's clock
    PRIMARY KEY (o365_subscription_id, term_end),
    CHECK ((outcome = 'renewed') = (new_term_end IS NOT NULL))
);
CREATE INDEX ix_o365_subscription_renewals_noted ON o365_subscription_renewals (noted_at);

CREATE TABLE o365_orders (
    subscription_id bigint PRIMARY KEY REFERENCES subscriptions ON DELETE CASCADE,
    attempt smallint NOT NULL DEFAULT 1 CHECK (attempt > 0),  -- an operator bumps it to order anew after a failure
    status text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'placed', 'failed')),
    requested_at timestamptz NOT NULL DEFAULT now(),
    request_id uuid,                                 -- MS-RequestId: derived from subscription and attempt
    ordered_offer_id text,                           -- what the first try of this attempt sent, resent as is
    ordered_quantity integer,
    ordered_billing_cycle text,
    tries integer NOT NULL DEFAULT 0,
    last_tried_at timestamptz,
    order_id text,
    o365_subscription_id text,                       -- Partner Center's subscription the order created
    placed_at timestamptz,
    last_error text,
    CHECK ((status = 'placed') = (order_id IS NOT NULL))
);
CREATE INDEX ix_o365_orders_pending ON o365_orders (requested_at) WHERE status = 'pending';

CREATE TABLE csp_licence_usage (
    csp_customer_id bigint NOT NULL REFERENCES csp_customers ON DELETE CASCADE,
    sku_id text NOT NULL,
    sku_name text,
    part_number text,
    active_units integer NOT NULL,                   -- purchased and active
    consumed_units integer NOT NULL,                 -- assigned
    suspended_units integer,
    warning_units integer,
    total_units integer,
    capability_status text,
    read_at timestamptz NOT NULL,
    PRIMARY KEY (csp_customer_id, sku_id)
);

CREATE TABLE csp_licence_alerts (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    csp_customer_id bigint NOT NULL REFERENCES csp_customers ON DELETE CASCADE,
    sku_id text NOT NULL,
    sku_name text,
    threshold_percent smallint NOT NULL,
    active_units integer NOT NULL,                   -- when it crossed
    consumed_units integer NOT NULL,
    {ALERT_EPISODE}
);
{alert_episode_indexes("csp_licence_alerts", "csp_customer_id, sku_id")}

ALTER TABLE o365_subscription_reconciliations
    ADD COLUMN kind text CHECK (kind IN ('missing_in_panel', 'missing_in_partner_center', 'quantity', 'status', 'offer')),
    ADD COLUMN profile_id bigint REFERENCES csp_profiles ON DELETE SET NULL,
    ADD COLUMN panel_subscription_id bigint;         -- not a foreign key: a record outlives what it describes
CREATE UNIQUE INDEX ux_o365_subscription_reconciliations_run
    ON o365_subscription_reconciliations (reconciled_at, profile_id, tenant_id, subscription_id, kind)
    WHERE kind IS NOT NULL;

ALTER TABLE azure_rates
    ALTER COLUMN unit_price TYPE numeric,
    ADD COLUMN source text CHECK (source IN ('retail_prices')),  -- NULL: rows from before (the RateCard)
    ADD COLUMN retail_price numeric,
    ADD COLUMN tier_minimum_units numeric NOT NULL DEFAULT 0,
    ADD COLUMN price_type text,
    ADD COLUMN reservation_term text,
    ADD COLUMN meter_name text,
    ADD COLUMN location text,
    ADD COLUMN sku_id text,
    ADD COLUMN sku_name text,
    ADD COLUMN arm_sku_name text,
    ADD COLUMN product_id text,
    ADD COLUMN product_name text,
    ADD COLUMN service_name text,
    ADD COLUMN service_family text,
    ADD COLUMN unit_of_measure text,
    ADD COLUMN is_primary_meter_region boolean,
    ADD COLUMN changed_at timestamptz;               -- the run that last corrected its price
CREATE UNIQUE INDEX ux_azure_rates_retail ON azure_rates
    (currency, meter_id, region, price_type, sku_id, reservation_term, tier_minimum_units, effective_date)
    NULLS NOT DISTINCT WHERE source = 'retail_prices';
"""


def upgrade() -> None:
    op.execute(DDL)


DROP = """
DROP INDEX ux_azure_rates_retail;
ALTER TABLE azure_rates
    DROP COLUMN source, DROP COLUMN retail_price, DROP COLUMN tier_minimum_units, DROP COLUMN price_type,
    DROP COLUMN reservation_term, DROP COLUMN meter_name, DROP COLUMN location, DROP COLUMN sku_id,
    DROP COLUMN sku_name, DROP COLUMN arm_sku_name, DROP COLUMN product_id, DROP COLUMN product_name,
    DROP COLUMN service_name, DROP COLUMN service_family, DROP COLUMN unit_of_measure,
    DROP COLUMN is_primary_meter_region, DROP COLUMN changed_at,
    ALTER COLUMN unit_price TYPE numeric(18,8);
DROP INDEX ux_o365_subscription_reconciliations_run;
ALTER TABLE o365_subscription_reconciliations DROP COLUMN kind, DROP COLUMN profile_id,
    DROP COLUMN panel_subscription_id;
DROP TABLE csp_licence_alerts, csp_licence_usage, o365_orders, o365_subscription_renewals, o365_subscriptions,
    csp_customers, csp_offers, csp_profile_syncs, csp_profiles;
"""


def downgrade() -> None:
    op.execute(DROP)
