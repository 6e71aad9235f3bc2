"""GroupActionWorkCRM 1 (process_crm_group_actions) against the Dataverse sandbox: exactly once."""

from __future__ import annotations

import psycopg
import pytest

from panelflow.services.group_actions import queue_job
from panelflow.steps.crm.jobs import process_crm_group_actions
from panelflow.steps.crm.sync import sync_crm_data

from .conftest import LOG, at


@pytest.fixture
def synced(crm, db, sql, migrated_panel_db):
    """The organisations pulled into the panel; ``synced.queue(action, **payload)`` queues a crm job."""
    sync_crm_data(db, at(), LOG)

    def queue(action, **payload):
        with psycopg.connect(migrated_panel_db, autocommit=True) as conn:
            return queue_job(conn, "crm", action, {"organization_id": crm.ids["contoso"], **payload})

    crm.queue = queue
    return crm


def jobs(sql):
    return sql("SELECT action, status, error FROM group_action_jobs ORDER BY id")


def run(db):
    return process_crm_group_actions(db, at(), {}, LOG)


def test_assign_role_by_name_in_the_users_unit_once(synced, db, sql):
    manager = synced.roles[(synced.sales, "Manager")]
    synced.queue("assign_role", domainname="ALICE@contoso.example", role_name="Manager")
    synced.queue("assign_role", systemuserid=synced.alice, role_id=manager)  # the same again: already held
    result = run(db)
    assert result["succeeded"] == 2 and result["failed"] == 0
    assert synced.orgs["contoso"].user_roles[synced.alice] == {manager, synced.roles[(synced.sales, "Salesperson")]}
    posts = [r for r in synced.api.requests if r[0] == "POST"]
    assert len(posts) == 1  # the second job looked first and sent nothing
    assert sql("SELECT result->>'changed' FROM group_action_jobs ORDER BY id") == [("true",), ("false",)]
    assert sql("SELECT cardinality(roles) FROM crm_users WHERE systemuserid = %s", (synced.alice,)) == [(2,)]


def test_disable_takes_every_role_and_enable_gives_them_back(synced, db, sql):
    salesperson = synced.roles[(synced.sales, "Salesperson")]
    synced.queue("disable_user", systemuserid=synced.alice)
    synced.queue("disable_user", systemuserid=synced.alice)  # a rerun: nothing left to take, nothing lost
    assert run(db)["succeeded"] == 2
    assert synced.orgs["contoso"].user_roles[synced.alice] == set()
    assert sql("SELECT access_revoked, suspended_roles::text[], roles::text[] FROM crm_users WHERE systemuserid = %s",
               (synced.alice,)) == [(True, [salesperson], [])]
    assert sql("SELECT result->'isdisabled' FROM group_action_jobs ORDER BY id LIMIT 1") == [(False,)]

    synced.queue("enable_user", systemuserid=synced.alice)
    assert run(db)["succeeded"] == 1
    assert synced.orgs["contoso"].user_roles[synced.alice] == {salesperson}
    assert sql("SELECT access_revoked, suspended_roles::text[], roles::text[] FROM crm_users WHERE systemuserid = %s",
               (synced.alice,)) == [(False, [], [salesperson])]


def test_set_licence_survives_a_412_and_writes_once(synced, db, sql):
    contoso = synced.orgs["contoso"]
    contoso.race(synced.bob, firstname="Robert")  # someone edits Bob between the job's read and its write
    synced.queue("set_licence", systemuserid=synced.bob, access_mode=2, cal_type=7)
    assert run(db)["succeeded"] == 1
    bob = contoso.users[synced.bob]
    assert (bob["accessmode"], bob["caltype"], bob["firstname"]) == (2, 7, "Robert")
    patches = [r for r in synced.api.requests if r[0] == "PATCH"]
    assert len(patches) == 2 and patches[0][3]["If-Match"] != patches[1][3]["If-Match"]
    assert sql("SELECT access_mode, cal_type, etag FROM crm_users WHERE systemuserid = %s", (synced.bob,)) == [
        (2, 7, bob["@odata.etag"])]
    synced.queue("set_licence", systemuserid=synced.bob, access_mode=2)
    assert run(db)["succeeded"] == 1
    assert len([r for r in synced.api.requests if r[0] == "PATCH"]) == 2  # already so: not written again


def test_a_user_changing_under_every_write_waits_for_a_later_run(synced, db, sql):
    synced.orgs["contoso"].race(synced.bob, times=2, firstname="Busy")
    synced.queue("set_licence", systemuserid=synced.bob, cal_type=5)
    assert run(db)["retry_later"] == 1
    assert sql("SELECT status FROM group_action_jobs") == [("pending",)]


def test_bad_jobs_fail_with_why_and_429s_are_survived(synced, db, sql):
    synced.api.throttle(2, retry_after=1)
    synced.queue("assign_role", systemuserid=synced.alice, role_name="Nobody")
    synced.queue("assign_role", domainname="ghost@contoso.example", role_name="Manager")
    synced.queue("set_licence", systemuserid=synced.bob, access_mode=9)
    synced.queue("remove_role", systemuserid=synced.bob, role_name="Salesperson")
    result = run(db)
    assert jobs(sql) == [
        ("assign_role", "failed", f"0 roles named 'Nobody' in the business unit of user {synced.alice}"),
        ("assign_role", "failed", "no CRM user ghost@contoso.example in organisation"
                                  f" {synced.org_url('contoso')} (not synced yet, or removed)"),
        ("set_licence", "failed", "payload 'access_mode' must be a whole number from 0 to 5"),
        ("remove_role", "succeeded", None)]
    assert result["succeeded"] == 1 and synced.orgs["contoso"].user_roles[synced.bob] == set()


def test_an_unreachable_organisation_puts_its_jobs_back(synced, db, sql, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_CRM_CONTOSO", synced.connection("contoso-tenant", "panelflow-crm", "wrong"))
    synced.queue("disable_user", systemuserid=synced.alice)
    synced.queue("disable_user", systemuserid=synced.bob)
    result = run(db)
    assert result["retry_later"] == 2
    assert [s for _, s, _ in jobs(sql)] == ["pending", "pending"]
    assert synced.orgs["contoso"].user_roles[synced.alice]  # nothing taken
