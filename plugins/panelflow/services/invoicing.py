"""What every invoicing step agrees on: invoice numbers and tax resolution.

An invoice number is derived, not allocated: ``R20261121-42`` is customer 42's recurring
invoice for 21 November 2026 (``O`` OCS call bill, ``S`` SIP bill, ``P`` pay-per-use, ``C`` SSL
order). A rerun computes the same number, so the number itself is an idempotency key (the outbox
keys invoice mail on it).

A line's tax rate is the customer's reseller's rate for the customer's country, else the
provider's rate for that country, else 0 (the provider does not charge tax there).
"""

from __future__ import annotations


INVOICE_PREFIX = {"recurring": "R", "ocs": "O", "sip": "S", "ppu": "P", "ssl": "C"}


def invoice_number_sql(kind: str, billing_date: str = "%(day)s", customer: str = "c.id") -> str:
    """SQL expression for the invoice number of ``customer`` on ``billing_date``."""
    return f"'{INVOICE_PREFIX[kind]}' || to_char({billing_date}::date, 'YYYYMMDD') || '-' || {customer}"


def invoice_number(kind: str, billing_date, customer_id: int) -> str:
    return f"{INVOICE_PREFIX[kind]}{billing_date:%Y%m%d}-{customer_id}"


# Joins giving ``tax.rate`` for customer alias ``c`` (use after FROM … customers c).
CUSTOMER_TAX_JOIN = """
LEFT JOIN tax_rates rt ON rt.reseller_id = c.reseller_id AND rt.country = c.country AND rt.provider_id IS NULL
LEFT JOIN tax_rates pt ON pt.provider_id = c.provider_id AND pt.country = c.country AND pt.reseller_id IS NULL
CROSS JOIN LATERAL (SELECT coalesce(rt.rate, pt.rate, 0)::numeric(6,4) AS rate) tax
"""
