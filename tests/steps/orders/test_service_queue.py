"""ProvisioningWork 1: orders become group-action jobs, once each; outcomes tracked; failures surfaced.

The backends' jobs are worked by the real queue (``process_group_actions``) with a handler standing in
for the server, so claiming, results, errors and secret removal are the queue's own.
"""

from __future__ import annotations

from panelflow.services.group_actions import JobRejected, process_group_actions
from panelflow.steps.orders.service_queue import process_service_queue_orders

from .conftest import run_at, utc

T1 = run_at(utc(2026, 12, 7, 10, 0))
T2 = run_at(utc(2026, 12, 7, 10, 10))
T3 = run_at(utc(2026, 12, 7, 10, 20))

AD_USER = {"backend": "ad", "action": "create_user",
           "payload": {"organisation_id": 7, "sam_account_name": "jdoe", "user_principal_name": "jdoe@acme.example",
                       "password": "S3cret!pass", "display_name": "J Doe"}}
MAILBOX = {"backend": "exchange", "action": "create_mailbox", "depends_on": [1],
           "payload": {"mailbox_id": 31, "ad_user": "{{result:1.object_guid}}"}}


def work(panel_db, backend, interval, answer):
    """The backend's processor: every pending job of ``backend`` through ``answer(action, payload)``."""
    seen = []

    def handler(action, payload):
        seen.append((action, payload))
        return answer(action, payload)

    process_group_actions(panel_db, backend, handler, interval)
    return seen


def test_order_becomes_jobs_in_dependency_order_with_results_filled_in(world, panel_db):
    sub = world.subscription()
    order = world.order([{**AD_USER, "subscription_id": sub}, {**MAILBOX, "subscription_id": sub}])

    summary = process_service_queue_orders(panel_db, T1)
    assert summary["jobs_queued"] == 1 and summary["orders_started"] == 1
    assert world.status(order) == ("provisioning", None)
    (job_id, backend, action, payload, status), = world.jobs()
    assert (backend, action, status) == ("ad", "create_user", "pending")
    assert payload["password"] == "S3cret!pass"           # the job holds the secret …
    template = world.one("SELECT payload FROM service_order_items WHERE order_id = %s AND position = 1", (order,))
    assert "password" not in template and template["sam_account_name"] == "jdoe"   # … the order no longer
    assert [(p, s, j) for p, s, j, _ in world.items(order)] == [(1, "queued", job_id), (2, "waiting", None)]

    seen = work(panel_db, "ad", T1, lambda action, payload: {"object_guid": "6f1c-guid", "dn": "CN=J Doe,OU=acme"})
    assert seen[0][1]["user_principal_name"] == "jdoe@acme.example"

    summary = process_service_queue_orders(panel_db, T2)
    assert summary["items_succeeded"] == 1 and summary["jobs_queued"] == 1
    jobs = world.jobs()
    assert [(b, a, p.get("ad_user"), p.get("mailbox_id")) for _, b, a, p, _ in jobs] == [
        ("ad", "create_user", None, None), ("exchange", "create_mailbox", "6f1c-guid", 31)]
    assert "password" not in jobs[0][3]                   # the queue dropped it when the job ended

    work(panel_db, "exchange", T2, lambda action, payload: {"guid": "mbx-1"})
    summary = process_service_queue_orders(panel_db, T3)
    assert summary["items_succeeded"] == 1 and summary["jobs_queued"] == 0
    assert [s for _, s, _, _ in world.items(order)] == ["succeeded", "succeeded"]
    assert world.status(order) == ("provisioning", None)  # Work Provision (22) finishes it
    assert [(level, event) for level, event, _ in world.logs(order)] == [
        ("info", "queued:1"), ("info", "succeeded:1"), ("info", "queued:2"), ("info", "succeeded:2")]


def test_reruns_and_backfills_queue_nothing_twice(world, panel_db, sql):
    order = world.order([AD_USER, {**AD_USER, "payload": {**AD_USER["payload"], "sam_account_name": "asmith",
                                                          "user_principal_name": "asmith@acme.example"}}])
    for interval in (T1, T1, T2, run_at(utc(2026, 12, 1, 0, 0))):   # rerun, retry, next run, an old backfill
        process_service_queue_orders(panel_db, interval)
    assert [(b, a) for _, b, a, _, _ in world.jobs()] == [("ad", "create_user"), ("ad", "create_user")]
    assert sorted(event for _, event, _ in world.logs(order)) == ["queued:1", "queued:2"]

    work(panel_db, "ad", T2, lambda action, payload: {"object_guid": payload["sam_account_name"]})
    for interval in (T3, T3):
        process_service_queue_orders(panel_db, interval)
    assert sorted(event for _, event, _ in world.logs(order)) == ["queued:1", "queued:2", "succeeded:1",
                                                                   "succeeded:2"]
    assert sql("SELECT count(*) FROM group_action_jobs")[0][0] == 2


def test_a_failed_job_fails_the_order_with_the_backends_reason(world, panel_db, sql, monkeypatch):
    third = {"backend": "lync", "action": "enable_user", "depends_on": [2],
             "payload": {"pool": "pool1", "ad_user": "jdoe@acme.example", "sip_address": "sip:jdoe@acme.example"}}
    order = world.order([AD_USER, MAILBOX, third])
    process_service_queue_orders(panel_db, T1)

    def refuse(action, payload):
        raise JobRejected("The name jdoe is already held by another account")

    work(panel_db, "ad", T1, refuse)
    summary = process_service_queue_orders(panel_db, T2)
    assert summary["items_failed"] == 1 and summary["orders_failed"] == 1 and summary["items_cancelled"] == 2
    status, error = world.status(order)
    assert status == "failed"
    assert error == "ad create_user (item 1, job 1): The name jdoe is already held by another account"
    assert [(p, s) for p, s, _, _ in world.items(order)] == [(1, "failed"), (2, "cancelled"), (3, "cancelled")]
    assert [(level, event) for level, event, _ in world.logs(order)] == [
        ("info", "queued:1"), ("error", "failed:1"), ("error", "order_failed")]
    assert "2 item(s) not queued" in world.logs(order)[-1][2]

    process_service_queue_orders(panel_db, T3)               # nothing more: no job for the cancelled items
    assert len(world.jobs()) == 1 and len(world.logs(order)) == 3

    # step 29 finds the order's error lines and tells the operators once
    from panelflow.steps import failure_notices

    monkeypatch.setattr(failure_notices, "_operators", lambda: ["ops@host.example"])
    from panelflow.steps.failure_notices import send_failure_notifications

    class Log:
        def warning(self, *args):
            pass

    summary = send_failure_notifications(panel_db, T3, Log())
    assert summary["order_failures"] == 1
    assert sql("SELECT count(*) FROM failure_notice_entries")[0][0] == 2


def test_items_that_cannot_be_jobs_fail_the_order_before_anything_is_queued(world, panel_db):
    sharepoint = world.order([{"backend": "sharepoint", "action": "create_site", "payload": {"url": "x"}}])
    no_key = world.order([{"backend": "sip", "action": "create_company", "payload": {"platform": "p1"}}, AD_USER])
    bad_ref = world.order([AD_USER, {**MAILBOX, "depends_on": [], "payload": {"mailbox_id": 3,
                                                                                "ad_user": "{{result:1.object_guid}}"}}])
    missing_dep = world.order([{**AD_USER, "depends_on": []}, {**MAILBOX, "depends_on": [1]}])
    world.sql("DELETE FROM service_order_items WHERE order_id = %s AND position = 1", (missing_dep,))
    empty = world.order([])
    no_sub = world.order([{"backend": "general", "action": "create_database",
                           "payload": {"db_server": "db1", "name": "shop", "subscription_id": "{{subscription_id}}"}}])

    summary = process_service_queue_orders(panel_db, T1)
    assert world.jobs() == []                                # no order queued anything: each has a refused item
    assert summary["orders_failed"] == 6 and summary["jobs_queued"] == 0
    assert world.status(sharepoint) == ("failed", "sharepoint create_site (item 1) refused: "
                                                  "no group-action processor for backend 'sharepoint'")
    assert world.status(no_key)[1] == "sip create_company (item 1) refused: sip create_company payload has no 'domain'"
    assert [(p, s) for p, s, _, _ in world.items(no_key)] == [(1, "failed"), (2, "cancelled")]
    kept = world.one("SELECT payload FROM service_order_items WHERE order_id = %s AND position = 2", (no_key,))
    assert "password" not in kept and kept["sam_account_name"] == "jdoe"      # never sent: the secret is not kept
    assert "which the item does not depend on" in world.status(bad_ref)[1]
    assert "depends on item(s) 1, not in the order" in world.status(missing_dep)[1]
    assert world.status(empty) == ("failed", "the order has no items")
    assert "the item provisions none" in world.status(no_sub)[1]
    assert summary["skipped"]["the order has no items"] == 1


def test_a_cancelled_order_is_left_alone_and_priorities_pass_to_the_jobs(world, panel_db, sql):
    cancelled = world.order([AD_USER])
    sql("UPDATE service_orders SET status = 'cancelled' WHERE id = %s", (cancelled,))
    sub = world.subscription()
    order = world.order([{"backend": "vps", "action": "create_vm", "priority": 1, "subscription_id": sub,
                          "payload": {"host": "hv1", "name": "vm-{{order_id}}", "memory_mb": 2048, "disk_gb": 40,
                                      "customer_id": "{{customer_id}}", "subscription_id": "{{subscription_id}}"}}])
    # a whole-value reference only: "vm-{{order_id}}" is refused, not half-filled
    assert world.status(order)[0] == "placed"
    process_service_queue_orders(panel_db, T1)
    assert "is not a known reference" in world.status(order)[1]

    order = world.order([{"backend": "vps", "action": "create_vm", "priority": 1, "subscription_id": sub,
                          "payload": {"host": "hv1", "name": "vm-acme", "memory_mb": 2048, "disk_gb": 40,
                                      "customer_id": "{{customer_id}}", "subscription_id": "{{subscription_id}}"}}])
    process_service_queue_orders(panel_db, T2)
    (_, backend, _, payload, _), = world.jobs()
    assert payload == {"host": "hv1", "name": "vm-acme", "memory_mb": 2048, "disk_gb": 40,
                       "customer_id": world.customer, "subscription_id": sub}
    assert sql("SELECT priority FROM group_action_jobs")[0][0] == 1
    assert world.status(cancelled) == ("cancelled", None) and world.logs(cancelled) == []
