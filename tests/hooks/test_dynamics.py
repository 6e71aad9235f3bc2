"""DynamicsHook against the loopback Dataverse sandbox (include/sandbox/dataverse.py): OData headers,
paging by @odata.nextLink, client-credential tokens, 429 + Retry-After, 412 on a stale ETag, roles."""

from __future__ import annotations

from uuid import UUID

import pytest

from panelflow.hooks.dynamics import (
    DynamicsAuthenticationError,
    DynamicsHook,
    DynamicsPreconditionFailed,
    DynamicsRequestError,
    DynamicsUnavailable,
)

from sandbox.dataverse import DataverseSandbox  # noqa: E402

TENANT, CLIENT, SECRET = "contoso-tenant", "panelflow-crm", "crm-secret-for-tests"


@pytest.fixture
def dv(monkeypatch):
    """Organisation ``contoso`` with a root unit, one role and 12 users, wired as connection ``crm_test``."""
    sandbox = DataverseSandbox().start()
    sandbox.issuer.register(TENANT, CLIENT, SECRET)
    org = sandbox.api.add_org("contoso", TENANT)
    bu = org.add_business_unit("Contoso")
    role = org.add_role("Salesperson", bu)
    users = [org.add_user(f"u{n:02d}@contoso.example", f"First{n}", f"Last{n}", bu, roles=(role,)) for n in range(12)]
    monkeypatch.setenv("AIRFLOW_CONN_CRM_TEST", sandbox.connection(TENANT, CLIENT, SECRET, page_size=5))
    sandbox.org, sandbox.bu, sandbox.role, sandbox.users = org, bu, role, users
    yield sandbox
    sandbox.stop()


def hook(dv, sleeps=None) -> DynamicsHook:
    return DynamicsHook("crm_test", org_url=dv.org_url("contoso"), **({"sleep": sleeps.append} if sleeps is not None
                                                                      else {}))


def test_pages_follow_next_link_with_odata_headers_and_one_token(dv):
    with hook(dv) as h:
        pages = list(h.user_pages(with_roles=True))
    assert [len(p.items) for p in pages] == [5, 5, 2]
    assert {str(u.id) for p in pages for u in p.items} == set(dv.users)
    first = pages[0].items[0]
    assert first.etag.startswith('W/"') and first.roles == (UUID(dv.role),)
    assert h.tokens_acquired == 1
    gets = [r for r in dv.api.requests if r[1] == "systemusers"]
    assert len(gets) == 3 and "$skiptoken" in gets[1][2] and "$select" in gets[1][2]
    assert all(r[3]["OData-MaxVersion"] == "4.0" and r[3]["OData-Version"] == "4.0"
               and r[3]["Accept"] == "application/json" and r[3]["Prefer"] == "odata.maxpagesize=5" for r in gets)


def test_429_waits_what_retry_after_says_then_answers(dv):
    sleeps: list[float] = []
    dv.api.throttle(2, retry_after=7)
    with hook(dv, sleeps) as h:
        org = h.organization()
    assert org.name == "Contoso"
    assert sleeps == [7.0, 7.0]  # the waits Dataverse asked for, not a guess


def test_429_through_every_attempt_is_unavailable(dv):
    dv.api.throttle(100, retry_after=1)
    with hook(dv, []) as h, pytest.raises(DynamicsUnavailable, match="429.*gave up after 4 attempts"):
        h.organization()


def test_stale_etag_is_412_and_a_fresh_read_writes(dv):
    with hook(dv) as h:
        user = h.user(dv.users[0])
        dv.org.edit_user(dv.users[0], firstname="Changed in CRM")
        with pytest.raises(DynamicsPreconditionFailed) as caught:
            h.update_user(user, {"lastname": "Panel"})
        assert caught.value.http_status == 412 and caught.value.code == "0x80060882"
        written = h.update_user(h.user(dv.users[0]), {"lastname": "Panel"})
    assert (written.first_name, written.last_name) == ("Changed in CRM", "Panel")
    assert dv.org.users[dv.users[0]]["lastname"] == "Panel"
    assert written.etag == dv.org.users[dv.users[0]]["@odata.etag"] != user.etag


def test_isdisabled_is_read_only(dv):
    with hook(dv) as h, pytest.raises(DynamicsRequestError, match="isdisabled"):
        h.update_user(h.user(dv.users[1]), {"isdisabled": True})
    assert dv.org.users[dv.users[1]]["isdisabled"] is False


def test_bad_record_is_reported_and_the_rest_of_the_page_kept(dv):
    dv.org.users["broken"] = {"systemuserid": "not-a-guid", "domainname": "x@contoso.example", "firstname": None,
                              "lastname": None, "isdisabled": False, "accessmode": 0, "caltype": 0,
                              "_businessunitid_value": dv.bu, "modifiedon": None, "@odata.etag": 'W/"1"'}
    with hook(dv) as h:
        pages = list(h.user_pages())
    assert sum(len(p.items) for p in pages) == 12
    assert [b for p in pages for b in p.bad] == [("systemusers not-a-guid", "badly formed hexadecimal UUID string")]


def test_roles_associate_once_and_disassociate(dv):
    other = dv.org.add_role("Manager", dv.bu)
    user = dv.users[2]
    with hook(dv) as h:
        assert h.add_role(user, other) is True
        assert h.add_role(user, other) is False  # Dataverse's duplicate key: already held
        assert h.roles_named("Manager", dv.bu)[0].id == UUID(other)
        h.remove_role(user, other)
    assert dv.org.user_roles[user] == {dv.role}


def test_refused_secret_and_a_renewed_token(dv, monkeypatch):
    with hook(dv) as h:
        h.organization()
        dv.issuer.expire_all()
        h.organization()  # 401 → one new token → the same request
        assert h.tokens_acquired == 2
    monkeypatch.setenv("AIRFLOW_CONN_CRM_TEST", dv.connection(TENANT, CLIENT, "wrong"))
    with hook(dv) as h, pytest.raises(DynamicsAuthenticationError, match="AADSTS7000215"):
        h.organization()
    with hook(dv) as h:
        ok, message = h.test_connection()
    assert not ok and "refused (HTTP 401)" in message
