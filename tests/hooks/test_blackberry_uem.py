"""BlackBerryUemHook against the UEM sandbox: UEM's authorization, versioned media types, paging."""

from __future__ import annotations

import base64
import json

import pytest

from panelflow.hooks.blackberry_uem import BlackBerryAuthenticationError, BlackBerryResponseError, BlackBerryUemHook
from sandbox.blackberry_uem import BlackBerryUemSandbox


@pytest.fixture
def uem(monkeypatch):
    with BlackBerryUemSandbox() as sandbox:
        def connect(password=sandbox.password, **extra):
            monkeypatch.setenv("AIRFLOW_CONN_BB_TEST", json.dumps({
                "conn_type": "panelflow_blackberry_uem", "host": sandbox.url, "login": sandbox.username,
                "password": password, "extra": {"tenant_guid": sandbox.tenant, "backoff": 0, "retries": 2,
                                                        **extra}}))

        connect()
        sandbox.connect = connect
        yield sandbox


def test_authorizes_as_uem_documents_and_pages_users(uem):
    for n in range(5):
        uem.add_user(f"user{n}", email=f"user{n}@contoso.example")
    uem.connect(page_size=2)
    uem.throttle(1)                                                         # a 429 is waited out, not fatal
    with BlackBerryUemHook("bb_test") as hook:
        pages = list(hook.user_pages())
        assert [len(p) for p in pages] == [2, 2, 1]
        assert [u.username for p in pages for u in p] == [f"user{n}" for n in range(5)]
        assert hook.authorizations == 1
    (auth,) = uem.calls("/util/authorization$")
    assert auth["method"] == "POST" and auth["status"] == 200
    users = uem.calls("/users$")
    assert [(u["query"], u["status"]) for u in users] == [
        ("offset=0&max=2", 429), ("offset=0&max=2", 200), ("offset=2&max=2", 200), ("offset=4&max=2", 200)]
    assert {u["accept"] for u in users} == {"application/vnd.blackberry.users-v1+json"}
    assert all(u["path"].startswith(f"/{uem.tenant}/api/v1/") for u in uem.requests)


def test_password_travels_base64_and_a_wrong_one_is_refused(uem):
    assert uem.authorize({"provider": "LOCAL", "username": uem.username,
                          "password": base64.b64encode(uem.password.encode()).decode()})
    assert uem.authorize({"provider": "LOCAL", "username": uem.username, "password": uem.password}) is None
    uem.connect(password="wrong")
    with BlackBerryUemHook("bb_test") as hook, pytest.raises(BlackBerryAuthenticationError, match="HTTP 400"):
        list(hook.user_pages())


def test_a_revoked_authorization_is_renewed_once(uem):
    guid = uem.add_user("alice", groups=("Sales", "VIP"))
    uem.add_device(guid, model="Pixel 8", os="Android 14", family="android", ownership="PERSONAL",
                   out_of_compliance=("jailbroken",), compromised=True)
    with BlackBerryUemHook("bb_test") as hook:
        assert [u.guid for p in hook.user_pages() for u in p] == [guid]
        uem.revoke()
        assert hook.user_groups(guid) == ["Sales", "VIP"]
        (device,) = hook.user_devices(guid)
        assert hook.authorizations == 2
    assert (device.hardware_model, device.os_family, device.ownership, device.compromised,
            device.out_of_compliance, device.enrollment_state) == ("Pixel 8", "android", "PERSONAL", True,
                                                                    ("jailbroken",), "ACTIVE")
    assert device.last_contact_at.isoformat() == "2026-12-06T22:15:00+00:00"
    assert uem.calls("/userDevices$")[-1]["accept"] == "application/vnd.blackberry.userdevices-v1+json"


def test_query_filters_and_the_user_bound_holds(uem):
    for n in range(4):
        uem.add_user(f"user{n}", email=f"user{n}@{'contoso' if n % 2 else 'fabrikam'}.example")
    uem.connect(user_query="emailAddress=*@contoso.example")
    with BlackBerryUemHook("bb_test") as hook:
        assert [u.username for p in hook.user_pages() for u in p] == ["user1", "user3"]
    uem.connect(page_size=1, max_users=2)
    with BlackBerryUemHook("bb_test") as hook, pytest.raises(BlackBerryResponseError, match="more than 2 users"):
        list(hook.user_pages())
