"""Payments on Stripe's API: card references moved into the gateway's vault (Customers, PaymentMethods).

Before this revision a payment profile held one ``gateway_token``: the old gateway's reference to
a stored card, charged as a ``source``. Stripe charges a saved card as a PaymentMethod (``pm_…``)
attached to a Customer (``cus_…``), both of which it keeps; a card reference from before has to be
moved into that vault once (ProvisioningWork 27, ``panelflow.steps.payment_profiles``). So:

- ``gateway_token`` is now the Stripe PaymentMethod id, NULL while the profile still waits to be
  moved; ``gateway_customer_id`` is the Stripe Customer it is attached to (one per panel customer:
  every profile of a customer names the same one). BillingWork charges a profile only when both
  are set and no legacy reference is left.
- ``legacy_card_token`` is the old reference (a card token, never a card number), cleared in the
  same statement that records the vaulted PaymentMethod: a profile holds one or the other.
  The existing ``gateway_token`` values that are not PaymentMethod ids move here.
- ``vault_error``: why Stripe refused to vault the card (a token it does not know or that was
  used already, a card declined when attached); the step leaves such a profile for an operator
  (who clears the column to try again) instead of asking Stripe the same thing every run.

No card number is, or ever was, in this table; ``card_brand``/``card_last4`` are what Stripe shows.
"""
from alembic import op

revision = "0027"
down_revision = "0026"

DDL = r"""
ALTER TABLE payment_profiles
    ALTER COLUMN gateway_token DROP NOT NULL,
    ADD COLUMN gateway_customer_id text CHECK (gateway_customer_id ~ '^cus_[A-Za-z0-9]+$'),
    ADD COLUMN legacy_card_token text UNIQUE,
    ADD COLUMN vault_error text;

UPDATE payment_profiles SET legacy_card_token = gateway_token, gateway_token = NULL
WHERE gateway_token !~ '^pm_';

ALTER TABLE payment_profiles ADD CONSTRAINT payment_profiles_card_reference
    CHECK (gateway_token IS NOT NULL OR legacy_card_token IS NOT NULL);

-- what ProvisioningWork 27 still has to move, in id order
CREATE INDEX ix_payment_profiles_legacy ON payment_profiles (id) WHERE legacy_card_token IS NOT NULL;

COMMENT ON COLUMN payment_profiles.gateway_token IS 'Stripe PaymentMethod id (pm_…)';
COMMENT ON COLUMN payment_attempts.gateway_charge_id IS 'Stripe PaymentIntent id (pi_…)';
COMMENT ON COLUMN payments.gateway_charge_id IS 'Stripe PaymentIntent id (pi_…)';
"""


def upgrade() -> None:
    op.execute(DDL)


def downgrade() -> None:
    # A vaulted profile's PaymentMethod id goes back into gateway_token; a profile never moved gets
    # its legacy reference back there.
    op.execute("""
        DROP INDEX ix_payment_profiles_legacy;
        ALTER TABLE payment_profiles DROP CONSTRAINT payment_profiles_card_reference;
        UPDATE payment_profiles SET gateway_token = legacy_card_token WHERE gateway_token IS NULL;
        ALTER TABLE payment_profiles
            ALTER COLUMN gateway_token SET NOT NULL,
            DROP COLUMN vault_error,
            DROP COLUMN legacy_card_token,
            DROP COLUMN gateway_customer_id;
        COMMENT ON COLUMN payment_profiles.gateway_token IS NULL;
        COMMENT ON COLUMN payment_attempts.gateway_charge_id IS NULL;
        COMMENT ON COLUMN payments.gateway_charge_id IS NULL;
    """)
