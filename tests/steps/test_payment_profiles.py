"""ProvisioningWork 27 (panelflow.steps.payment_profiles): legacy card references moved into the
Stripe sandbox's vault on the real panel DB — once, whatever a run dies of.

The sandbox's own Customers and PaymentMethods are the judge: a rerun, a retry after a lost answer
or a run killed between Stripe's answer and our commit leaves exactly one Customer per panel
customer and one PaymentMethod per profile.
"""

from __future__ import annotations

import logging

import psycopg
import pytest

from panelflow.hooks.payment_gateway import GatewayAuthenticationError, PaymentGatewayHook
from panelflow.steps.payment_profiles import VaultIncomplete, create_pci_credit_profiles

LOG = logging.getLogger("test_payment_profiles")


class Killed(BaseException):
    """The worker dies right after Stripe answered, before anything was committed."""


@pytest.fixture
def profiles(panel_db, sql):
    """``profiles.add(name, *tokens)``: a customer with one legacy profile per token (the first default)."""
    sql("INSERT INTO currencies (code, name, minor_units) VALUES ('GBP', 'Pound sterling', 2)")
    sql("INSERT INTO providers (name, billing_email, currency) VALUES ('Provider', 'billing@provider.test', 'GBP')")

    class Profiles:
        def add(self, name, *tokens, email=True):
            ((customer_id,),) = sql(
                "INSERT INTO customers (provider_id, name, email, country, currency) VALUES"
                " ((SELECT min(id) FROM providers), %s, %s, 'GB', 'GBP') RETURNING id",
                (name, f"{name.lower()}@customer.test" if email else None))
            for n, token in enumerate(tokens):
                sql("INSERT INTO payment_profiles (customer_id, legacy_card_token, is_default) VALUES (%s, %s, %s)",
                    (customer_id, token, n == 0))
            return customer_id

    return Profiles()


def rows(sql, customer_id):
    return sql("SELECT legacy_card_token, gateway_customer_id, gateway_token, card_brand, card_last4, vault_error"
               " FROM payment_profiles WHERE customer_id = %s ORDER BY id", (customer_id,))


def posts(gateway):
    return [(r["path"].rsplit("/", 1)[-1], r["replayed"]) for r in gateway.requests if r["method"] == "POST"]


def test_legacy_cards_are_moved_once(profiles, panel_db, sql, payment_gateway):
    ada = profiles.add("Ada", "tok_visa_ada")
    bob = profiles.add("Bob", "tok_mastercard_bob1", "tok_amex_bob2")       # two cards, one Stripe Customer
    carol = profiles.add("Carol", "tok_visa_chargeDeclinedInsufficientFunds_carol")  # declined when attached
    dan = profiles.add("Dan", "tok_not_a_stripe_token")
    eve = profiles.add("Eve")
    eve_customer, eve_card = payment_gateway.saved_card(name="Eve")         # saved on Stripe already
    sql("INSERT INTO payment_profiles (customer_id, gateway_customer_id, gateway_token) VALUES (%s, %s, %s)",
        (eve, eve_customer, eve_card))

    summary = create_pci_credit_profiles(panel_db=panel_db, log=LOG)

    assert (summary["profiles_vaulted"], summary["customers_created"], summary["vault_refused"]) == (3, 3, 2)
    customers = {c["metadata"].get("panel_customer_id"): c for c in payment_gateway.customers}
    assert set(customers) == {str(ada), str(bob), str(carol), None}          # Eve's was there before
    assert (customers[str(ada)]["name"], customers[str(ada)]["email"]) == ("Ada", "ada@customer.test")
    methods = {m["id"]: m for m in payment_gateway.payment_methods}
    ((_, ada_customer, ada_card, brand, last4, error),) = rows(sql, ada)
    assert (ada_customer, brand, last4, error) == (customers[str(ada)]["id"], "visa", "4242", None)
    assert methods[ada_card]["customer"] == ada_customer and methods[ada_card]["metadata"] == {
        "panel_payment_profile_id": str(sql("SELECT id FROM payment_profiles WHERE customer_id = %s", (ada,))[0][0])}
    bob_rows = rows(sql, bob)
    assert [(r[0], r[1], r[3], r[4]) for r in bob_rows] == [(None, customers[str(bob)]["id"], "mastercard", "4444"),
                                                            (None, customers[str(bob)]["id"], "amex", "8431")]
    assert {methods[r[2]]["customer"] for r in bob_rows} == {customers[str(bob)]["id"]}
    # Stripe refused these: kept with the reason, for an operator, and not asked again
    ((legacy, _, card, _, _, error),) = rows(sql, carol)
    assert legacy.startswith("tok_visa_chargeDeclined") and card.startswith("pm_") and "insufficient funds" in error
    assert methods[card]["customer"] is None
    ((legacy, _, card, _, _, error),) = rows(sql, dan)
    assert (legacy, card) == ("tok_not_a_stripe_token", None) and "No such token" in error
    assert summary["skipped"] == {"Stripe refused the card (insufficient_funds)": 1,
                                  "Stripe refused the card (resource_missing)": 1}
    assert rows(sql, eve) == [(None, eve_customer, eve_card, None, None, None)]   # untouched
    # no card number anywhere: only ids, brand and last four digits
    assert not sql("SELECT 1 FROM payment_profiles WHERE concat_ws(' ', legacy_card_token, gateway_token,"
                   " card_last4, vault_error) ~ '[0-9]{12,}'")
    before = (payment_gateway.customers, payment_gateway.payment_methods, len(payment_gateway.requests))

    again = create_pci_credit_profiles(panel_db=panel_db, log=LOG)            # a rerun: nothing left to move

    assert (again["profiles_vaulted"], again["customers_created"], again["vault_refused"]) == (0, 0, 0)
    assert (payment_gateway.customers, payment_gateway.payment_methods, len(payment_gateway.requests)) == before


@pytest.mark.parametrize("dies_after", ["create_customer", "payment_method_from_token", "attach"])
def test_a_run_killed_after_stripe_answered_resumes_without_a_second_customer_or_card(
        profiles, panel_db, sql, payment_gateway, monkeypatch, dies_after):
    ada = profiles.add("Ada", "tok_visa_ada")
    real = getattr(PaymentGatewayHook, dies_after)

    def answered_then_killed(self, *args, **kwargs):
        real(self, *args, **kwargs)
        raise Killed

    monkeypatch.setattr(PaymentGatewayHook, dies_after, answered_then_killed)
    with pytest.raises(Killed):
        create_pci_credit_profiles(panel_db=panel_db, log=LOG)
    monkeypatch.setattr(PaymentGatewayHook, dies_after, real)

    summary = create_pci_credit_profiles(panel_db=panel_db, log=LOG)        # Airflow's retry

    assert summary["profiles_vaulted"] == 1
    (customer,) = payment_gateway.customers
    (method,) = payment_gateway.payment_methods
    assert rows(sql, ada) == [(None, customer["id"], method["id"], "visa", "4242", None)]
    assert method["customer"] == customer["id"]
    # the request the dead worker never recorded was answered again from Stripe's idempotency store
    # (or, for the Customer, found by its metadata first), never executed twice
    sent = posts(payment_gateway)
    assert sent.count(("customers", False)) == 1 and sent.count(("payment_methods", False)) == 1
    assert sent.count(("attach", False)) == 1


def test_no_answer_leaves_the_profile_and_fails_the_task_after_the_rest(profiles, panel_db, sql, payment_gateway):
    first = profiles.add("First", "tok_visa_first")
    second = profiles.add("Second", "tok_visa_second")
    payment_gateway.throttle(1)                                               # the first request: 429

    with pytest.raises(VaultIncomplete, match=r"1 payment profile\(s\) without an answer from Stripe"):
        create_pci_credit_profiles(panel_db=panel_db, log=LOG)

    assert rows(sql, first) == [("tok_visa_first", None, None, None, None, None)]
    assert rows(sql, second)[0][0] is None                                    # the rest was moved
    assert create_pci_credit_profiles(panel_db=panel_db, log=LOG)["profiles_vaulted"] == 1
    assert rows(sql, first)[0][0] is None and len(payment_gateway.customers) == 2


def test_a_refused_key_fails_at_once_and_changes_nothing(profiles, panel_db, sql, payment_gateway, monkeypatch):
    ada = profiles.add("Ada", "tok_visa_ada")
    monkeypatch.setenv("AIRFLOW_CONN_PAYMENT_GATEWAY", payment_gateway.connection(password="sk_test_wrong_key"))

    with pytest.raises(GatewayAuthenticationError):
        create_pci_credit_profiles(panel_db=panel_db, log=LOG)

    assert rows(sql, ada) == [("tok_visa_ada", None, None, None, None, None)]
    assert payment_gateway.customers == [] and payment_gateway.payment_methods == []


def test_migration_moves_old_tokens_to_the_legacy_column(postgres):
    """0027 on a panel DB with the old gateway's tokens: they become legacy references; a
    PaymentMethod id already there stays the profile's card."""
    from panelflow.db import downgrade, upgrade

    postgres.create_database("panel_vault_migration")
    url = postgres.uri("panel_vault_migration")
    upgrade(url, "0026")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO currencies (code, name, minor_units) VALUES ('GBP', 'Pound sterling', 2)")
        conn.execute("INSERT INTO providers (name, billing_email, currency) VALUES ('P', 'b@p.test', 'GBP')")
        conn.execute("INSERT INTO customers (provider_id, name, country, currency) SELECT min(id), 'C', 'GB', 'GBP'"
                     " FROM providers")
        conn.execute("INSERT INTO payment_profiles (customer_id, gateway_token, is_default) SELECT c.id, token,"
                     " token LIKE 'tok%%' FROM customers c, unnest(ARRAY['tok_old_1', 'pm_new_2']) token")
    upgrade(url, "0027")
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT legacy_card_token, gateway_token FROM payment_profiles ORDER BY id").fetchall() \
            == [("tok_old_1", None), (None, "pm_new_2")]
    downgrade(url, "0026")
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT gateway_token FROM payment_profiles ORDER BY id").fetchall() == [
            ("tok_old_1",), ("pm_new_2",)]
