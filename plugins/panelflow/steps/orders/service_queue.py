"""ProvisioningWork 1 'Process service queue orders': the panel's orders become group-action jobs.

An order (``service_orders``, placed by the panel with its ``service_order_items``; migration
0028 describes the interface) is worked in two parts each run, each one atomic:

1. **Settle** — every queued item whose job finished takes the job's outcome (``succeeded`` with
   its result, or ``failed`` with its error). The first failed item fails its order with the
   backend's reason; items of that order not queued yet are ``cancelled`` (never queued). One
   statement: item states, the order's failure and the log lines commit together.
2. **Queue** — for open orders (oldest first, locked ``SKIP LOCKED`` so two runs never work one
   order), every waiting item whose dependencies all succeeded gets its payload filled in
   (:func:`.payloads.render`) and checked (:func:`.payloads.check`); then one statement writes
   the jobs (ids drawn from the queue's sequence first), the items' ``job_id`` (UNIQUE) and
   ``queued`` state, the order's move to ``provisioning`` and the log lines. An item that cannot
   become a job (unknown backend or action, a required key missing, a bad reference, a
   dependency the order does not have) fails with that reason and fails the order, in the same
   statement; so does an order placed with no items.

Exactly once: a worker killed anywhere leaves each statement done or undone, never half; a
rerun finds queued items with their job and queues nothing again. Every log line names its
event, UNIQUE per order (``queued:<position>``, ``succeeded:<position>``, ``failed:<position>``,
``order_failed``), so a line is never written twice. ``error`` lines are what ProvisioningWork
29 tells the operators about; step 7 deletes lines after 90 days.

The clock is ``interval.end`` (job ``created_at``, ``queued_at``, log times). The thread runs
every 10 minutes, so a chain of dependent items advances one item per run at least (plus the
backend's own queue); the run is bounded by ``orders_per_run``/``order_items_per_run``.
"""

from __future__ import annotations

from psycopg.types.json import Jsonb

from panelflow.services.group_actions import SECRET_KEYS
from panelflow.step import StepReport

from .payloads import ItemRefused, check, render

ORDERS_PER_RUN = 100
ITEMS_PER_RUN = 1000

# The failure of orders named by a ``failures(order_id, item_id, position, reason)`` CTE: the first
# failure (lowest position) is the order's reason; its waiting items that did not fail themselves
# are cancelled. Then the log: ``item_events(order_id, level, message, event)`` and one line per
# failed order, each event once per order.
_FAIL_AND_LOG = """
first_failure AS (
    SELECT DISTINCT ON (order_id) order_id, reason FROM failures ORDER BY order_id, position NULLS FIRST
), failed_orders AS (
    UPDATE service_orders o SET status = 'failed', error = f.reason, finished_at = %(at)s
    FROM first_failure f WHERE o.id = f.order_id AND o.status IN ('placed', 'provisioning')
    RETURNING o.id, o.error
), cancelled AS (
    UPDATE service_order_items i SET state = 'cancelled', error = 'not queued: the order failed', finished_at = %(at)s,
           payload = i.payload - %(secrets)s::text[]          -- never sent: its secrets are not kept
    WHERE i.order_id IN (SELECT id FROM failed_orders) AND i.state = 'waiting'
      AND NOT EXISTS (SELECT 1 FROM failures f WHERE f.item_id = i.id)
    RETURNING i.order_id
), logs AS (
    INSERT INTO service_queue_logs (order_id, level, message, logged_at, event)
    SELECT order_id, level, message, %(at)s, event FROM item_events
    UNION ALL
    SELECT o.id, 'error', 'order failed: ' || o.error || coalesce('; ' || c.n || ' item(s) not queued', ''), %(at)s,
           'order_failed'
    FROM failed_orders o LEFT JOIN (SELECT order_id, count(*) AS n FROM cancelled GROUP BY order_id) c
        ON c.order_id = o.id
    ON CONFLICT (order_id, event) WHERE event IS NOT NULL DO NOTHING
    RETURNING level
)"""

_COUNTS = """(SELECT count(*) FROM failed_orders), (SELECT count(*) FROM cancelled), (SELECT count(*) FROM logs)"""

SETTLE = f"""
WITH done AS MATERIALIZED (
    SELECT i.id, i.order_id, i.position, i.backend, i.action, j.id AS job_id, j.status, j.result, j.error
    FROM service_order_items i JOIN group_action_jobs j ON j.id = i.job_id
    WHERE i.state = 'queued' AND j.status IN ('succeeded', 'failed')
    ORDER BY i.id LIMIT %(limit)s
    FOR UPDATE OF i SKIP LOCKED
), settled AS (
    UPDATE service_order_items i SET state = d.status, result = d.result, error = d.error, finished_at = %(at)s
    FROM done d WHERE i.id = d.id
    RETURNING i.state
), failures AS (
    SELECT order_id, id AS item_id, position,
           backend || ' ' || action || ' (item ' || position || ', job ' || job_id || '): '
               || coalesce(error, 'failed without an error') AS reason
    FROM done WHERE status = 'failed'
), item_events AS (
    SELECT order_id, CASE status WHEN 'failed' THEN 'error' ELSE 'info' END AS level,
           backend || ' ' || action || ' (item ' || position || ', job ' || job_id || ') ' || status
               || coalesce(': ' || error, '') AS message,
           status || ':' || position AS event
    FROM done
), {_FAIL_AND_LOG}
SELECT (SELECT count(*) FILTER (WHERE state = 'succeeded') FROM settled),
       (SELECT count(*) FILTER (WHERE state = 'failed') FROM settled), {_COUNTS}
"""

# An item is ready when no dependency it names is in the order without having succeeded
# (a dependency the order lacks is found and refused when the item is read).
_READY = """i.state = 'waiting' AND NOT EXISTS (
    SELECT 1 FROM service_order_items d
    WHERE d.order_id = i.order_id AND d.position = ANY (i.depends_on) AND d.state <> 'succeeded')"""

OPEN_ORDERS = f"""
SELECT o.id, o.customer_id, NOT EXISTS (SELECT 1 FROM service_order_items i WHERE i.order_id = o.id) AS empty
FROM service_orders o
WHERE o.status IN ('placed', 'provisioning')
  AND (EXISTS (SELECT 1 FROM service_order_items i WHERE i.order_id = o.id AND {_READY})
       OR (o.status = 'placed' AND NOT EXISTS (SELECT 1 FROM service_order_items i WHERE i.order_id = o.id)))
ORDER BY o.placed_at, o.id
LIMIT %(limit)s
FOR UPDATE OF o SKIP LOCKED
"""

READY_ITEMS = f"""
SELECT i.id, i.order_id, i.position, i.depends_on, i.backend, i.action, i.payload, i.subscription_id,
       (SELECT coalesce(jsonb_object_agg(d.position, d.result), '{{}}') FROM service_order_items d
        WHERE d.order_id = i.order_id AND d.position = ANY (i.depends_on)) AS results,
       ARRAY(SELECT p FROM unnest(i.depends_on) p WHERE NOT EXISTS (
             SELECT 1 FROM service_order_items d WHERE d.order_id = i.order_id AND d.position = p)) AS missing
FROM service_order_items i
WHERE i.order_id = ANY (%(orders)s) AND {_READY}
ORDER BY i.order_id, i.position
LIMIT %(limit)s
"""

QUEUE = f"""
WITH input AS (
    SELECT * FROM unnest(%(item_ids)s::bigint[], %(payloads)s::jsonb[]) AS t(item_id, payload)
), failures AS (
    SELECT * FROM unnest(%(f_orders)s::bigint[], %(f_items)s::bigint[], %(f_positions)s::integer[],
                         %(f_reasons)s::text[]) AS f(order_id, item_id, position, reason)
), queued AS MATERIALIZED (     -- one job id per item, drawn before anything is written
    SELECT i.id AS item_id, i.order_id, i.position, i.backend, i.action, i.priority, t.payload,
           nextval(pg_get_serial_sequence('group_action_jobs', 'id')::regclass) AS job_id
    FROM input t JOIN service_order_items i ON i.id = t.item_id
    WHERE i.state = 'waiting' AND i.job_id IS NULL
), jobs AS (
    INSERT INTO group_action_jobs (id, backend, action, payload, priority, created_at)
    OVERRIDING SYSTEM VALUE
    SELECT job_id, backend, action, payload, priority, %(at)s FROM queued
    RETURNING id
), marked AS (
    UPDATE service_order_items i SET state = 'queued', job_id = q.job_id, queued_at = %(at)s,
           payload = i.payload - %(secrets)s::text[]          -- the job holds it until the job ends
    FROM queued q WHERE i.id = q.item_id
    RETURNING i.id
), refused AS (
    UPDATE service_order_items i SET state = 'failed', error = f.reason, finished_at = %(at)s,
           payload = i.payload - %(secrets)s::text[]
    FROM failures f WHERE i.id = f.item_id AND i.state = 'waiting'
    RETURNING i.id
), started AS (
    UPDATE service_orders o SET status = 'provisioning', started_at = %(at)s
    WHERE o.id IN (SELECT order_id FROM queued) AND o.status = 'placed'
    RETURNING o.id
), item_events AS (
    SELECT order_id, 'info' AS level,
           'queued ' || backend || ' ' || action || ' (item ' || position || ') as job ' || job_id AS message,
           'queued:' || position AS event
    FROM queued
    UNION ALL
    SELECT order_id, 'error', reason, 'failed:' || position FROM failures WHERE item_id IS NOT NULL
), {_FAIL_AND_LOG}
SELECT (SELECT count(*) FROM jobs), (SELECT count(*) FROM marked), (SELECT count(*) FROM refused),
       (SELECT count(*) FROM started), {_COUNTS}
"""


def _prepare(orders: dict[int, int], empty: list[int], items: list[tuple], report: StepReport):
    """The job payload of each ready item, or why it cannot be one — per order: an order with a
    refused item queues nothing more (the order fails and its waiting items are cancelled)."""
    payloads: dict[int, list[tuple[int, dict]]] = {}
    failures: list[tuple[int, int | None, int | None, str]] = []
    for item_id, order_id, position, depends_on, backend, action, template, subscription_id, results, missing in items:
        try:
            if missing:
                raise ItemRefused(f"depends on item(s) {', '.join(map(str, missing))}, not in the order")
            payload = render(template, order_id=order_id, customer_id=orders[order_id],
                             subscription_id=subscription_id, depends_on=list(depends_on),
                             results={int(k): v for k, v in (results or {}).items()})
            check(backend, action, payload)
        except ItemRefused as exc:
            reason = f"{backend} {action} (item {position}) refused: {exc}"
            failures.append((order_id, item_id, position, reason))
            report.skip(str(exc), f"order {order_id} item {position}")
            continue
        payloads.setdefault(order_id, []).append((item_id, payload))
    for order_id in empty:
        failures.append((order_id, None, None, "the order has no items"))
        report.skip("the order has no items", f"order {order_id}")
    failed = {f[0] for f in failures}
    ready = [(item_id, payload) for order_id, entries in payloads.items() if order_id not in failed
             for item_id, payload in entries]
    return ready, failures


def process_service_queue_orders(panel_db, interval, params=None, log=None) -> dict:
    """Process service queue orders: jobs of finished items settled, orders failed with the
    backend's reason, ready items queued as group-action jobs — each once."""
    params = params or {}
    at = interval.end
    report = StepReport().zero("items_succeeded", "items_failed", "jobs_queued", "items_refused", "orders_started",
                               "orders_failed", "items_cancelled", "log_lines")
    with panel_db.get_conn() as conn:
        conn.autocommit = True
        succeeded, failed, failed_orders, cancelled, logged = conn.execute(
            SETTLE, {"at": at, "secrets": list(SECRET_KEYS),
                     "limit": int(params.get("order_items_per_run", ITEMS_PER_RUN))}).fetchone()
        report.add("items_succeeded", succeeded)
        report.add("items_failed", failed)
        report.add("orders_failed", failed_orders)
        report.add("items_cancelled", cancelled)
        report.add("log_lines", logged)
        with conn.transaction():
            rows = conn.execute(OPEN_ORDERS, {"limit": int(params.get("orders_per_run", ORDERS_PER_RUN))}).fetchall()
            if not rows:
                return report.as_dict()
            items = conn.execute(READY_ITEMS, {"orders": [row[0] for row in rows],
                                               "limit": int(params.get("order_items_per_run", ITEMS_PER_RUN))}
                                 ).fetchall()
            orders = {order_id: customer_id for order_id, customer_id, _ in rows}
            ready, failures = _prepare(orders, [order_id for order_id, _, empty in rows if empty], items, report)
            jobs, marked, refused, started, failed_orders, cancelled, logged = conn.execute(QUEUE, {
                "at": at, "secrets": list(SECRET_KEYS),
                "item_ids": [i for i, _ in ready], "payloads": [Jsonb(p) for _, p in ready],
                "f_orders": [f[0] for f in failures], "f_items": [f[1] for f in failures],
                "f_positions": [f[2] for f in failures], "f_reasons": [f[3] for f in failures],
            }).fetchone()
            if jobs != marked:  # cannot happen while items are only queued here; never leave a job without its item
                raise RuntimeError(f"{jobs} jobs written for {marked} items; rolled back")
    report.add("jobs_queued", jobs)
    report.add("items_refused", refused)
    report.add("orders_started", started)
    report.add("orders_failed", failed_orders)
    report.add("items_cancelled", cancelled)
    report.add("log_lines", logged)
    if log is not None:
        log.info("service queue: %s jobs queued, %s items settled, %s orders failed", jobs, succeeded + failed,
                 report.counts["orders_failed"])
    return report.as_dict()
