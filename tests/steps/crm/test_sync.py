"""SyncFromBackendWork 1 (sync_crm_data) against the Dataverse sandbox."""

from __future__ import annotations

import pytest

from panelflow.steps.crm._backend import CrmOrganizationsFailed
from panelflow.steps.crm.sync import sync_crm_data

from sandbox.dataverse import DataverseSandbox, demo

from .conftest import CLIENT, LOG, NOW, SECRET, at, panel_customers


def users(sql):
    return sql("SELECT o.url, u.domainname, u.first_name, u.last_name, u.synced_first_name, cardinality(u.roles),"
               " u.cal_type, u.removed_at IS NOT NULL FROM crm_users u JOIN crm_organizations o"
               " ON o.id = u.organization_id ORDER BY u.domainname")


def test_pull_mirrors_units_roles_and_users_and_a_rerun_adds_nothing(crm, db, sql):
    first = sync_crm_data(db, at(), LOG)
    assert first["organizations"] == 2 and first["organizations_failed"] == 0
    assert (first["business_units"], first["roles"], first["users_added"]) == (3, 4, 3)
    contoso, fabrikam = crm.org_url("contoso"), crm.org_url("fabrikam")
    assert users(sql) == [  # Microsoft's support user is not the customer's
        (contoso, "alice@contoso.example", "Alice", "Archer", "Alice", 1, 0, False),
        (contoso, "bob@contoso.example", "Bob", "Baker", "Bob", 1, 2, False),
        (fabrikam, "carol@fabrikam.example", "Carol", "Cole", "Carol", 0, 0, False)]
    assert sql("SELECT crm_name, synced_at, last_error FROM crm_organizations ORDER BY id") == [
        ("Contoso", NOW, None), ("Fabrikam", NOW, None)]
    assert sql("SELECT count(*) FROM crm_roles WHERE organization_id = %s", (crm.ids["contoso"],)) == [(4,)]

    again = sync_crm_data(db, at(), LOG)
    assert (again["users_added"], again["users_updated"], again["users_removed"]) == (0, 3, 0)
    assert sql("SELECT count(*) FROM crm_users") == [(3,)]
    assert sql("SELECT count(*) FROM crm_business_units") == [(3,)]


def test_names_are_the_name_syncs_after_first_sight_and_what_crm_owns_follows_it(crm, db, sql):
    sync_crm_data(db, at(), LOG)
    crm.orgs["contoso"].edit_user(crm.alice, firstname="Alicia", caltype=7)
    sync_crm_data(db, at(NOW.add(hours=1)), LOG)
    assert sql("SELECT first_name, cal_type FROM crm_users WHERE systemuserid = %s", (crm.alice,)) == [("Alice", 7)]


def test_user_gone_from_crm_is_marked_removed_and_bad_records_are_reported(crm, db, sql):
    sync_crm_data(db, at(), LOG)
    contoso = crm.orgs["contoso"]
    del contoso.users[crm.bob]
    contoso.users["broken"] = {"systemuserid": "not-a-guid", "domainname": "x@contoso.example", "isdisabled": False,
                               "@odata.etag": 'W/"9"'}
    odd = contoso.add_user("odd@contoso.example", "Odd", "One", crm.root, caltype=99)
    result = sync_crm_data(db, at(NOW.add(hours=1)), LOG)
    assert result["users_removed"] == 1
    assert result["skipped"] == {"badly formed hexadecimal UUID string": 1, "unknown CAL type 99": 1}
    assert f"user {odd}: unknown CAL type 99" in result["skipped_examples"]
    assert [r[1] for r in users(sql) if r[7]] == ["bob@contoso.example"]
    assert sql("SELECT count(*) FROM crm_users WHERE systemuserid = %s", (odd,)) == [(0,)]


def test_service_protection_429s_are_survived(crm, db, sql):
    crm.api.throttle(3, retry_after=1)
    result = sync_crm_data(db, at(), LOG)
    assert result["organizations_failed"] == 0 and result["users_added"] == 3
    assert sum(1 for r in crm.api.requests if r[0] == "GET") > 3  # the throttled ones were sent again


def test_one_organisation_failing_is_recorded_and_the_other_synced(crm, db, sql, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_CRM_FABRIKAM", crm.connection("fabrikam-tenant", "panelflow-crm", "wrong"))
    result = sync_crm_data(db, at(), LOG)
    assert result["organizations_failed"] == 1
    assert sql("SELECT crm_name, synced_at, tried_at, last_error LIKE '%%AADSTS7000215%%' FROM crm_organizations"
               " ORDER BY id") == [("Contoso", NOW, NOW, None), (None, None, NOW, True)]
    monkeypatch.setenv("AIRFLOW_CONN_CRM_CONTOSO", crm.connection("contoso-tenant", "panelflow-crm", "wrong"))
    with pytest.raises(CrmOrganizationsFailed, match="every CRM organisation"):
        sync_crm_data(db, at(), LOG)


def test_nothing_configured_is_a_summary(db):
    assert sync_crm_data(db, at(), LOG)["organizations"] == 0


def test_make_runs_demo_organisation_restarted_holds_the_same_records(db, sql, monkeypatch):
    """make run's Dataverse sandbox derives its GUIDs from the names: after a restart the sync finds
    the same 25 users, none removed and re-added."""
    customer = panel_customers(sql, ("demo",))["demo"]
    results = []
    for when in (NOW, NOW.add(hours=1)):                                   # make run, then restarted
        sandbox = DataverseSandbox().start()
        try:
            sandbox.issuer.register("demo-tenant", CLIENT, SECRET)
            demo(sandbox.api.add_org("demo", "demo-tenant", stable_ids=True), 25)
            monkeypatch.setenv("AIRFLOW_CONN_CRM_DEMO", sandbox.connection("demo-tenant", CLIENT, SECRET))
            if not results:
                sql("INSERT INTO crm_organizations (customer_id, url, conn_id) VALUES (%s, %s, 'crm_demo')",
                    (customer, sandbox.org_url("demo")))
            else:                                                           # the same row; here a new port
                sql("UPDATE crm_organizations SET url = %s WHERE conn_id = 'crm_demo'", (sandbox.org_url("demo"),))
            results.append(sync_crm_data(db, at(when), LOG))
        finally:
            sandbox.stop()
    assert results[0]["users_added"] == 25
    assert (results[1]["users_added"], results[1]["users_removed"]) == (0, 0)
    assert sql("SELECT count(*), count(*) FILTER (WHERE removed_at IS NULL) FROM crm_users") == [(25, 25)]
