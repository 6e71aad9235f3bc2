"""The DAG folder as the dag-processor sees it, checked against the catalog."""

from __future__ import annotations

import pytest

from panelflow.alerts import ThreadFailureNotifier
from panelflow.catalog import load_catalog
from panelflow.factory import LIST_SUFFIX, WAIT_TASK_ID
from panelflow.operators import StepOperator
from panelflow.run_groups.leases import GUARD_TASK_ID
from panelflow.run_groups.operators import ReleaseRunGroups

FRAME_TASKS = {WAIT_TASK_ID, GUARD_TASK_ID}   # the tasks around a thread's steps


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag("dags")


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}


def test_exactly_the_live_threads(dagbag, catalog):
    assert len(catalog.threads) == 69
    assert len(catalog.live_threads) == 61
    assert sorted(dagbag.dags) == sorted(t.dag_id for t in catalog.live_threads)
    legacy = {t.dag_id for t in catalog.threads if not t.is_live}
    assert len(legacy) == 8 and not legacy & set(dagbag.dags)


def test_every_step_is_a_task_or_reported_missing(dagbag, catalog):
    for thread in catalog.live_threads:
        dag = dagbag.dags[thread.dag_id]
        task_ids = {t for t in dag.task_ids if t not in FRAME_TASKS and not t.endswith(LIST_SUFFIX)}
        runnable = {s.id for s in thread.runnable_steps()}
        assert task_ids == runnable, thread.name
        # a thread with run groups and steps waits for its groups first (in the triggerer) and gives
        # them back when the run ends (DAG callbacks, in the dag-processor)
        guarded = bool(thread.run_groups and runnable)
        released = [cb for cbs in (dag.on_success_callback or [], dag.on_failure_callback or [])
                    for cb in cbs if isinstance(cb, ReleaseRunGroups)]
        assert (GUARD_TASK_ID in dag.task_ids, len(released)) == (guarded, 2 * guarded), thread.name
        if guarded:
            guard = dag.get_task(GUARD_TASK_ID)
            assert guard.is_setup and guard.start_from_trigger and not any(t.is_teardown for t in dag.tasks)
            assert not {t.task_id for t in dag.tasks if not t.upstream_list} - {GUARD_TASK_ID, WAIT_TASK_ID}
        for step in thread.steps:
            if step.id in runnable:
                task = dag.get_task(step.id)
                if step.map_over:  # mapped: its lister comes first and takes the step's upstreams
                    assert task.partial_kwargs["run"] == step.run and task.task_display_name == step.seed
                    lister = dag.get_task(step.id + LIST_SUFFIX)
                    assert isinstance(lister, StepOperator) and lister.run == step.map_over
                    assert {u.task_id for u in task.upstream_list} == {lister.task_id}
                    task = lister
                else:
                    assert isinstance(task, StepOperator) and task.run == step.run
                    assert task.task_display_name == step.seed
                assert {u.task_id for u in task.upstream_list} - FRAME_TASKS == set(step.after)
            else:
                assert f"`{step.id}`" in dag.doc_md and "not built yet" in dag.doc_md.lower()


def test_dag_attributes_follow_the_catalog(dagbag, catalog):
    for thread in catalog.live_threads:
        dag = dagbag.dags[thread.dag_id]
        assert dag.dag_display_name == thread.name
        assert dag.max_active_runs == 1
        assert thread.domain in dag.tags
        assert dag.doc_md.startswith(f"# {thread.name}")
        prio = catalog.priority(thread)
        for task in dag.tasks:
            assert task.owner == ",".join(catalog.owners(thread))
            step = next((s for s in thread.steps if s.id == task.task_id.removesuffix(LIST_SUFFIX)), None)
            # a step may name nodes of its own (a PowerShell step of a master-node thread); else the thread's
            assert task.queue == "+".join(step.nodes if step is not None and step.nodes else thread.nodes)
            assert task.priority_weight == 11 - prio
            assert task.retries == (0 if task.task_id == WAIT_TASK_ID else catalog.retries(thread))
            notifiers = [cb for cb in task.on_failure_callback if isinstance(cb, ThreadFailureNotifier)]
            assert len(notifiers) == 1 and notifiers[0].to == catalog.alert_to(thread)
            assert notifiers[0].thread == thread.name
            if task.task_id == GUARD_TASK_ID:
                assert task.pool == "default_pool"   # waiting in queue takes no run-group slot
            elif task.task_id != WAIT_TASK_ID:
                assert task.pool == (step.pool or (thread.run_groups[0] if thread.run_groups else "default_pool"))
                assert task.pool in catalog.pools() or task.pool == "default_pool"


def test_built_steps_and_their_dags(dagbag, catalog):
    """The threads built so far, with the shape of a few."""
    def steps(dag_id):
        return set(dagbag.dags[dag_id].task_ids) - FRAME_TASKS

    # every seed step is built (issues 14-17): ProvisioningWork's 46 are all tasks
    provisioning = next(t for t in catalog.live_threads if t.name == "ProvisioningWork")
    assert steps("provisioning_work") == {s.id for s in provisioning.steps} and len(provisioning.steps) == 46
    assert steps("sessions_mgt_work") == {"expire_sessions", "delete_old_session_history"}
    assert steps("send_email_notifications_work") == {"send_due_notifications"}
    assert steps("send_email_campaign_work") == {"send_campaign_emails"}
    assert steps("domain_verification") == {"verify_domains_by_txt_record"}
    billing = dagbag.dags["billing_work"]
    assert steps("billing_work") == {"reseller_commissions", "billing_process", "ocs_call_record_bills",
                                     "sip_billing_and_exports", "o365_price_update_notifications"}
    assert billing.get_task("reseller_commissions").upstream_task_ids == {"billing_process"}
    assert billing.get_task("billing_process").upstream_task_ids == {GUARD_TASK_ID}   # in queue for "billing"
    assert billing.get_task("billing_process").pool == "billing"
    assert billing.get_task("sip_billing_and_exports").pool == "voice_billing"
    built = {d for d, dag in dagbag.dags.items() if dag.tasks}
    assert built == {t.dag_id for t in catalog.live_threads}   # no thread starts paused any more
    # every step of the issue-5 threads is built; group-action processors run in the group_actions pool
    ad = dagbag.dags["group_action_work_ad"]
    assert ad.get_task("process_ad_group_actions").pool == "group_actions"
    assert ad.get_task("update_ad_extended_data").upstream_task_ids >= {"sync_ad_user_services"}
    assert dagbag.dags["group_action_work_ex"].get_task("process_exchange_group_actions").pool == "group_actions"
    assert dagbag.dags["group_action_work_vps"].get_task("process_vps_group_actions").pool == "group_actions"
    assert dagbag.dags["group_action_work_ex"].get_task("process_exchange_group_actions").queue == "remoting"
    assert dagbag.dags["provisioning_work"].get_task("update_vm_paths").queue == "remoting"   # a step's own nodes
    assert dagbag.dags["provisioning_work"].get_task("work_provision").queue == "master"
    # tenants in parallel: one mapped task instance per tenant, listed when the run starts
    sync = dagbag.dags["office365_sync_work"]
    assert steps("office365_sync_work") == {"sync_tenant_entities__items", "sync_tenant_entities"}
    mapped = sync.get_task("sync_tenant_entities")
    assert mapped.upstream_task_ids == {"sync_tenant_entities__items"} and mapped.pool == "o365_sync"
    assert type(mapped).__name__ == "MappedOperator"


def test_threads_with_nothing_built_start_paused(dagbag):
    for dag_id, dag in dagbag.dags.items():
        assert dag.is_paused_upon_creation == (not dag.tasks), dag_id


def test_pools_cover_run_groups_and_group_actions(catalog):
    pools = catalog.pools()
    assert set(pools) == set(catalog.run_groups) | {"group_actions"}
    assert pools["group_actions"]["slots"] == catalog.settings.group_actions.threads_run_simultaneously
    for name, group in catalog.run_groups.items():
        assert pools[name]["slots"] == group.slots


def test_dag_ids_are_snake_case_of_seed_names(catalog):
    ids = {t.name: t.dag_id for t in catalog.threads}
    assert ids["SyncCSPOffers"] == "sync_csp_offers"
    assert ids["Office365SyncWork"] == "office365_sync_work"
    assert ids["O365SyncAdminLogsWork"] == "o365_sync_admin_logs_work"
    assert ids["GroupActionWorkAD"] == "group_action_work_ad"
    assert ids["HyperVHomeBackendThread"] == "hyper_v_home_backend_thread"
