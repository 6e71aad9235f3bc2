"""Producers for tables read before they had one: recycle-bin items, CSP trials, O365 price lists, add-on usage.

Every panel table a step reads has a producer (``tests/catalog/test_producers.py`` checks it). This
revision gives the last ones theirs:

- ``recycle_bin_items.exchange_mailbox_id``: the Exchange mailbox an item is. Producer:
  GroupActionWorkEx 1 (``…exchange.jobs``, ``delete_mailbox``) writes the item in the transaction
  that sets the mailbox's ``recycle_bin`` status, at most one per mailbox in the bin (unique), so a
  job re-taken after a lost worker adds nothing. Mailboxes already in the bin when this revision
  runs get their item now (purge 30 days after their deletion, as GroupActionWorkEx 7 purges them).
- ``csp_trials``: which subscriptions are on a CSP trial, and until when, is Partner Center's, as
  the reconciliation writes it (``o365_subscriptions.is_trial`` / ``commitment_end_date``);
  ``csp_trials`` becomes ProvisioningWork 24's ledger of the expiries it acted on (one row per panel
  subscription). Its ``converted_at`` had no producer: a trial converted at Partner Center is no
  longer ``is_trial``. Rows that carried it are kept as handled (``outcome = 'converted'``), so no
  fact is lost; rows not yet acted on stay and are completed by step 24.
- ``o365_price_sheets``: each Partner Center price sheet (market, view) imported, once per version
  (its content's SHA-256); ``o365_price_lists.price_sheet_id`` names the sheet a price came from.
  Producer: BillingWork 5 (``…o365_prices``), which imports the sheets before it notifies.
- ``addon_usage_reports`` / ``addon_usage_report_lines``: UsageReportWork 2's add-on usage report,
  once per calendar month (header row unique per period; lines keyed by customer, add-on, price).
"""
from alembic import op

revision = "0038"
down_revision = "0037"

DDL = """
ALTER TABLE recycle_bin_items
    ADD COLUMN exchange_mailbox_id bigint REFERENCES exchange_mailboxes ON DELETE CASCADE;
CREATE UNIQUE INDEX ux_recycle_bin_items_exchange_mailbox ON recycle_bin_items (exchange_mailbox_id)
    WHERE exchange_mailbox_id IS NOT NULL;
INSERT INTO recycle_bin_items (customer_id, kind, name, deleted_at, purge_at, exchange_mailbox_id)
SELECT o.customer_id, 'mailbox', m.primary_smtp_address, m.deleted_at, m.deleted_at + interval '30 days', m.id
FROM exchange_mailboxes m JOIN exchange_organizations o ON o.id = m.organization_id
WHERE m.status = 'recycle_bin' AND m.deleted_at IS NOT NULL AND o.customer_id IS NOT NULL;

ALTER TABLE csp_trials DROP CONSTRAINT csp_trials_outcome_check;
ALTER TABLE csp_trials ADD CONSTRAINT csp_trials_outcome_check
    CHECK (outcome IN ('suspended', 'already_inactive', 'converted'));
UPDATE csp_trials SET handled_at = converted_at, outcome = 'converted'
WHERE converted_at IS NOT NULL AND handled_at IS NULL;
DROP INDEX ix_csp_trials_due;
ALTER TABLE csp_trials DROP COLUMN converted_at;

CREATE TABLE o365_price_sheets (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    market char(2) NOT NULL CHECK (market ~ '^[A-Z]{2}$'),
    view text NOT NULL,                               -- Partner Center's PricesheetView (updatedlicensebased)
    sha256 char(64) NOT NULL,                         -- the file's digest: a version is its content
    profile_id bigint REFERENCES csp_profiles ON DELETE SET NULL,  -- the profile it was read through
    price_rows integer NOT NULL,                      -- the rows kept (one offer, currency and start each)
    imported_at timestamptz NOT NULL,                 -- the run's clock
    UNIQUE (market, view, sha256)
);
ALTER TABLE o365_price_lists ADD COLUMN price_sheet_id bigint REFERENCES o365_price_sheets ON DELETE SET NULL;

CREATE TABLE addon_usage_reports (
    period_start date PRIMARY KEY,                    -- the calendar month reported (its first day)
    period_end date NOT NULL CHECK (period_end > period_start),
    taken_at timestamptz NOT NULL,                    -- the run's clock: the add-ons as they stood then
    line_count integer NOT NULL
);
CREATE TABLE addon_usage_report_lines (
    period_start date NOT NULL REFERENCES addon_usage_reports ON DELETE CASCADE,
    customer_id bigint NOT NULL REFERENCES customers ON DELETE CASCADE,
    reseller_id bigint REFERENCES resellers ON DELETE SET NULL,
    addon_name text NOT NULL,                         -- trimmed, as the panel names it
    currency char(3) NOT NULL,
    unit_price numeric(14,2) NOT NULL,
    subscriptions integer NOT NULL CHECK (subscriptions > 0),
    quantity bigint NOT NULL CHECK (quantity > 0),
    amount numeric(16,2) NOT NULL,                    -- unit_price × quantity: a month of these add-ons
    PRIMARY KEY (period_start, customer_id, addon_name, currency, unit_price)
);
CREATE INDEX ix_addon_usage_report_lines_reseller ON addon_usage_report_lines (reseller_id, period_start)
    WHERE reseller_id IS NOT NULL;
"""


def upgrade() -> None:
    op.execute(DDL)


DROP = """
DROP TABLE addon_usage_report_lines, addon_usage_reports;
ALTER TABLE o365_price_lists DROP COLUMN price_sheet_id;
DROP TABLE o365_price_sheets;
ALTER TABLE csp_trials ADD COLUMN converted_at timestamptz;
UPDATE csp_trials SET converted_at = handled_at, handled_at = NULL, outcome = NULL WHERE outcome = 'converted';
ALTER TABLE csp_trials DROP CONSTRAINT csp_trials_outcome_check;
ALTER TABLE csp_trials ADD CONSTRAINT csp_trials_outcome_check CHECK (outcome IN ('suspended', 'already_inactive'));
CREATE INDEX ix_csp_trials_due ON csp_trials (trial_ends_at) WHERE handled_at IS NULL AND converted_at IS NULL;
DROP INDEX ux_recycle_bin_items_exchange_mailbox;
ALTER TABLE recycle_bin_items DROP COLUMN exchange_mailbox_id;
"""


def downgrade() -> None:
    op.execute(DROP)
