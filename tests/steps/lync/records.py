"""Panel rows the Lync tests write (customers, subscriptions, Lync users, queued jobs), and the
recorded pools' hosts."""

from __future__ import annotations

from psycopg.types.json import Jsonb

POOL01_FQDN = "lyncpool01.corp.example"
POOL02_FQDN = "lyncpool02.corp.example"
FE01, FE02 = "fe01.corp.example", "fe02.corp.example"


def on(host):
    return lambda sent: sent.conn_host == host


def customer(sql, name="Contoso Ltd") -> int:
    return sql("INSERT INTO customers (provider_id, name, email, country, currency)"
               " VALUES (1, %s, 'it@contoso.example', 'GB', 'GBP') RETURNING id", (name,))[0][0]


def subscription(sql, cust, *, due, price="20.00", status="active", plan="Hosted Voice") -> int:
    return sql("INSERT INTO subscriptions (customer_id, plan, price, currency, billing_cycle, next_bill_date,"
               " started_on, status) VALUES (%s, %s, %s, 'GBP', 'monthly', %s, %s, %s) RETURNING id",
               (cust, plan, price, due, due, status))[0][0]


def lync_user(sql, pool_id, sip, *, subscription=None, customer=None, enabled=False, line_uri=None,
              voice=False, voice_policy=None, conferencing_policy=None, ad_user=None, changed_at="2026-03-01T00:00Z"):
    return sql("INSERT INTO lync_users (pool_id, customer_id, subscription_id, sip_address, ad_user, line_uri,"
               " enterprise_voice, voice_policy, conferencing_policy, enabled, changed_at)"
               " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
               (pool_id, customer, subscription, sip, ad_user or sip[4:], line_uri, voice, voice_policy,
                conferencing_policy, enabled, changed_at))[0][0]


def queue(sql, action, payload, priority=5) -> int:
    return sql("INSERT INTO group_action_jobs (backend, action, payload, priority) VALUES ('lync', %s, %s, %s)"
               " RETURNING id", (action, Jsonb(payload), priority))[0][0]


def job_state(sql, job_id):
    return sql("SELECT status, attempts, result, error FROM group_action_jobs WHERE id = %s", (job_id,))[0]


def declared_parameters(script: str) -> set[str]:
    """The parameter names of a script's ``param()`` block (``[type]$Name`` entries)."""
    import re

    from panelflow.hooks.powershell import script_text

    block = re.search(r"^param\((.*?)^\)", script_text(script), re.S | re.M)
    return set(re.findall(r"\]\s*\$(\w+)", block.group(1))) if block else set()
