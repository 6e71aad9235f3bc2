"""SSL certificate orders at DigiCert and Sectigo, their certificates and invoices.

- ``ssl_orders``: one row per certificate order a customer placed. Its writer is the panel: the
  order form places the order at the vendor (DigiCert's ``POST /order/certificate/{product}``,
  Sectigo's ``AutoApplySSL``) and records the vendor's order id, the product, the names, the
  validity, the customer's ``price`` and the vendor's ``cost`` (what the vendor quoted), and the
  CSR. ProvisioningWork steps 2 (DigiCert) and 4 (Sectigo) then move it: ``pending`` until the
  vendor issues, ``issued`` once a certificate passed verification and is stored, or the vendor's
  end: ``rejected``, ``cancelled``, ``revoked``. ``(vendor, vendor_order_id)`` is unique: a vendor
  order is one panel order whichever run sees it.
- **Private keys are never stored here.** The CSR is public and is all verification needs: the
  issued certificate's public key must equal the CSR's, and the CSR's signature proves whoever
  made it held the key. ``key_source`` says who made the pair: ``customer`` (their server; the
  panel never sees the key) or ``panel`` (the panel's order form generated it for the customer and
  handed it over; the panel's key store, not this database, keeps it if at all).
- ``ssl_certificates``: what a vendor issued for an order, verified (chain to a trusted root, key
  match, validity at the run's clock, names) before it is written; the leaf and the rest of the
  chain as PEM. ``UNIQUE (ssl_order_id, serial)``: a rerun, a retry or a worker killed between
  storing and marking the order stores it once. A reissue is another serial of the same order.
- Invoices: an issued order is billed once, on an ``ssl`` invoice of its customer for the day
  after it was issued (one per customer and day, like the OCS/SIP bills: an invoice is final once
  written, so orders issued later that day wait for the next one), one ``ssl_certificate`` line
  per order whose period is the certificate's validity. ``ssl_orders.invoice_id`` is set by the
  statement that writes the invoice and is the "billed once" mark; the line's key is the order's
  subscription (one SSL subscription per certificate order; its renewals are later orders) and the
  certificate's first day.
- ``ssl_estimated_bills``: the renewal charge each active certificate will bring — per order and
  renewal date (the certificate's last day), the price the customer will pay and what the vendor
  will charge the provider for the same product and validity. Recomputed each run; a certificate
  no longer active (expired, revoked, renewed by a later order) has none.
"""
from alembic import op

revision = "0030"
down_revision = "0029"

MONEY = "numeric(14,2)"
INVOICE_KINDS = "'recurring', 'ocs', 'sip', 'ppu'"          # as 0028 left them
LINE_KINDS = "'subscription', 'addon', 'credit', 'ocs_calls', 'sip_usage', 'ppu'"

DDL = f"""
CREATE TABLE ssl_orders (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id bigint NOT NULL REFERENCES customers,
    subscription_id bigint NOT NULL REFERENCES subscriptions,
    vendor text NOT NULL CHECK (vendor IN ('digicert', 'sectigo')),
    vendor_order_id text NOT NULL,
    vendor_certificate_id text,                       -- DigiCert's certificate id, once issued
    vendor_status text,                               -- the vendor's own word, as last read
    product text NOT NULL,                            -- the vendor's product id (ssl_basic, 287 …)
    common_name text NOT NULL,
    sans text[] NOT NULL DEFAULT '{{}}',              -- DNS names besides the common name
    validity_years smallint NOT NULL CHECK (validity_years BETWEEN 1 AND 3),
    auto_renew boolean NOT NULL DEFAULT true,
    status text NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'issued', 'rejected', 'cancelled', 'revoked')),
    currency char(3) NOT NULL,                        -- the customer's
    price {MONEY} NOT NULL CHECK (price >= 0),        -- what the customer pays for the order
    cost {MONEY} CHECK (cost >= 0),                   -- what the vendor charges the provider
    cost_currency char(3),
    csr text NOT NULL,                                -- PEM; public
    key_source text NOT NULL CHECK (key_source IN ('customer', 'panel')),
    ordered_at timestamptz NOT NULL,
    checked_at timestamptz,                           -- the run (its clock) that last asked the vendor
    issued_at timestamptz,                            -- the run that stored the verified certificate
    invoice_id bigint,                                -- not a foreign key: written with its invoice
    last_error text,                                  -- why the last check failed or its certificate was refused
    UNIQUE (vendor, vendor_order_id),
    CHECK ((status = 'issued') = (issued_at IS NOT NULL)),
    CHECK (cost IS NULL OR cost_currency IS NOT NULL)
);
CREATE INDEX ix_ssl_orders_pending ON ssl_orders (vendor, checked_at NULLS FIRST, id) WHERE status = 'pending';
CREATE INDEX ix_ssl_orders_uninvoiced ON ssl_orders (issued_at, customer_id) WHERE status = 'issued' AND invoice_id IS NULL;
CREATE INDEX ix_ssl_orders_subscription ON ssl_orders (subscription_id);

CREATE TABLE ssl_certificates (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ssl_order_id bigint NOT NULL REFERENCES ssl_orders,
    serial text NOT NULL,                             -- hex, upper case
    not_before timestamptz NOT NULL,
    not_after timestamptz NOT NULL,
    fingerprint_sha256 text NOT NULL,                 -- hex of the leaf's DER
    certificate_pem text NOT NULL,                    -- the leaf
    chain_pem text NOT NULL,                          -- the verified path above it, issuer first, up to the root
    stored_at timestamptz NOT NULL,
    UNIQUE (ssl_order_id, serial),
    CHECK (not_before < not_after)
);

CREATE TABLE ssl_estimated_bills (
    ssl_order_id bigint NOT NULL REFERENCES ssl_orders,
    renewal_date date NOT NULL,                       -- the active certificate's last day
    customer_id bigint NOT NULL REFERENCES customers,
    currency char(3) NOT NULL,
    estimated_charge {MONEY} NOT NULL,                -- the customer's price for the renewal
    cost_currency char(3),
    estimated_cost {MONEY},                           -- the vendor's price for the same product and validity
    computed_at timestamptz NOT NULL,
    PRIMARY KEY (ssl_order_id, renewal_date)
);
CREATE INDEX ix_ssl_estimated_bills_date ON ssl_estimated_bills (renewal_date);

ALTER TABLE invoices DROP CONSTRAINT invoices_kind_check,
    ADD CONSTRAINT invoices_kind_check CHECK (kind IN ({INVOICE_KINDS}, 'ssl'));
ALTER TABLE invoice_lines DROP CONSTRAINT invoice_lines_kind_check,
    ADD CONSTRAINT invoice_lines_kind_check CHECK (kind IN ({LINE_KINDS}, 'ssl_certificate'));
"""

DROP = f"""
ALTER TABLE invoice_lines DROP CONSTRAINT invoice_lines_kind_check,
    ADD CONSTRAINT invoice_lines_kind_check CHECK (kind IN ({LINE_KINDS}));
ALTER TABLE invoices DROP CONSTRAINT invoices_kind_check,
    ADD CONSTRAINT invoices_kind_check CHECK (kind IN ({INVOICE_KINDS}));
DROP TABLE ssl_estimated_bills, ssl_certificates, ssl_orders;
"""


def upgrade() -> None:
    op.execute(DDL)


def downgrade() -> None:
    op.execute(DROP)
