"""GroupActionWorkAD steps 1, 4, 5 and AutoAddUsersInSecurityGroupWork (panelflow.steps.active_directory) on a
real Samba AD DC (tests/harness/samba_dc.py) and the real panel DB: every object a test touches lives in its own OU."""

from __future__ import annotations

import importlib
import json
import threading
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from psycopg.types.json import Jsonb
from harness.samba_dc import samba_dc, samba_ou  # noqa: F401  (fixtures)

from panelflow.step import Interval

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=timezone.utc)
OWN_TABLES = ("ad_directories", "ad_organisations", "ad_users", "ad_groups", "ad_group_members", "group_action_jobs",
              "ad_group_auto_add_settings", "ad_user_cn_upn", "ad_user_mailbox_types", "ad_mailbox_login_disables",
              "hosting_database_users", "system_alerts")
PASSWORD = "Str0ng!Passw0rd"


@pytest.fixture(autouse=True)
def _own_tables(panel_db, sql):
    sql("TRUNCATE " + ", ".join(OWN_TABLES) + " RESTART IDENTITY CASCADE")


@pytest.fixture
def ad(samba_dc, samba_ou, sql, monkeypatch):  # noqa: F811
    """The test's OU as a managed directory (``ad_directories`` row ``ad.id``, connection ``ad_test``);
    ``ad.org(name)`` adds an organisation OU below it (and its ``ad_organisations`` row)."""

    class Ad:
        dc, base = samba_dc, samba_ou

        def org(self, name: str) -> tuple[int, str]:
            dn = samba_dc.add_ou(name, parent=samba_ou)
            (oid,) = sql("INSERT INTO ad_organisations (directory_id, object_guid, dn, name) VALUES (%s, %s, %s, %s)"
                         " RETURNING id", (self.id, samba_dc.guid(dn), dn, name))[0]
            return oid, dn

        def user(self, parent: str, sam: str, **kw) -> str:
            return samba_dc.add_user(parent, sam, **kw)

        def find(self, filter: str, *attrs: str, base: str | None = None) -> dict[str, dict]:
            conn = samba_dc.ldap()
            conn.search(base or samba_ou, filter, attributes=list(attrs) or ["objectGUID"])
            return {e["dn"]: e["raw_attributes"] for e in conn.response if e.get("type") == "searchResEntry"}

        def uac(self, dn: str) -> int:
            return samba_dc.get_int(dn, "userAccountControl")

        def members(self, group_dn: str) -> set[str]:
            return {v.decode() for v in samba_dc.get(group_dn, "member")["member"]}

    monkeypatch.setenv("AIRFLOW_CONN_AD_TEST", samba_dc.connection())
    ad = Ad()
    (ad.id,) = sql("INSERT INTO ad_directories (name, conn_id, base_dn) VALUES ('test', 'ad_test', %s) RETURNING id",
                   (samba_ou,))[0]
    return ad


# the module of panelflow.steps.active_directory each step lives in
STEP_MODULES = {"disable_logins_by_mailbox_type": "mailbox_logins", "rename_delete_hostmatic_db_users": "hostmatic",
                "add_users_to_security_groups": "security_groups", "change_cn_on_upn_change": "cn_follows_upn",
                "sync_system_alerts": "alerts"}


def _at(end=T0):
    return Interval(end - timedelta(minutes=5), end)


def _job(sql, action, payload, priority=5):
    return sql("INSERT INTO group_action_jobs (backend, action, payload, priority) VALUES ('ad', %s, %s, %s)"
               " RETURNING id", (action, Jsonb(payload), priority))[0][0]


def _state(sql, job):
    return sql("SELECT status, attempts, result, error, payload FROM group_action_jobs WHERE id = %s", (job,))[0]


def _process(panel_db, at=T0, **params):
    from panelflow.steps.active_directory.jobs import process_ad_group_actions

    return process_ad_group_actions(panel_db, _at(at), params, None)


def _step(name, panel_db, at=T0, **params):
    steps = importlib.import_module(f"panelflow.steps.active_directory.{STEP_MODULES[name]}")
    return getattr(steps, name)(panel_db, _at(at), params, None)


# -- 1. group actions -------------------------------------------------------------------------------


def test_every_action_changes_the_directory_and_records_its_result(ad, panel_db, sql):
    dc = ad.dc
    # the organisation first: later jobs name it by the panel id its job returns
    org_job = _job(sql, "create_organization", {"directory_id": ad.id, "name": "Contoso",
                                                "description": "Contoso Ltd", "upn_suffixes": ["Contoso.example"]})
    assert _process(panel_db)["succeeded"] == 1
    status, attempts, result, error, _ = _state(sql, org_job)
    org_dn = f"OU=Contoso,{ad.base}"
    assert (status, attempts, error) == ("succeeded", 1, None)
    assert result == {"dn": org_dn, "object_guid": dc.guid(org_dn), "organisation_id": 1, "created": True}
    assert dc.get(org_dn, "uPNSuffixes", "description") == {"uPNSuffixes": [b"contoso.example"],
                                                             "description": [b"Contoso Ltd"]}
    assert sql("SELECT directory_id, object_guid::text, dn, name, upn_suffixes FROM ad_organisations") == [
        (ad.id, dc.guid(org_dn), org_dn, "Contoso", ["contoso.example"])]
    other_org, other_dn = ad.org("Fabrikam")
    doomed = ad.user(org_dn, "doomed")
    locked = ad.user(org_dn, "locked")
    dc.modify(locked, lockoutTime="134000000000000000")

    jobs = {
        "user": _job(sql, "create_user", {"organisation_id": 1, "sam_account_name": "jo.bloggs",
                                          "user_principal_name": "jo.bloggs@contoso.example", "password": PASSWORD,
                                          "display_name": "Jo Bloggs", "given_name": "Jo", "surname": "Bloggs",
                                          "attributes": {"department": "Sales"}}, priority=1),
        "group": _job(sql, "create_group", {"organisation_id": 1, "name": "Contoso Staff", "sam_account_name": "contoso-staff",
                                            "description": "Everyone", "auto_add_users": True}, priority=1),
        "member": _job(sql, "add_group_member", {"organisation_id": 1, "group": "contoso-staff",
                                                 "member": "jo.bloggs@contoso.example"}, priority=2),
        "member_again": _job(sql, "add_group_member", {"organisation_id": 1, "group": "contoso-staff",
                                                       "member": "jo.bloggs"}, priority=3),
        "update": _job(sql, "update_user", {"directory_id": ad.id, "user": "jo.bloggs",
                                            "attributes": {"title": "CTO", "telephoneNumber": "+44 20 7946 0000",
                                                           "department": None}}, priority=3),
        "reset": _job(sql, "reset_password", {"directory_id": ad.id, "user": "jo.bloggs@contoso.example",
                                              "password": "N3w!Passw0rd-x", "must_change_password": False}, priority=3),
        "disable": _job(sql, "disable_user", {"directory_id": ad.id, "user": "jo.bloggs"}, priority=4),
        "unlock": _job(sql, "unlock_user", {"directory_id": ad.id, "user": dc.guid(locked)}, priority=4),
        "delete": _job(sql, "delete_user", {"directory_id": ad.id, "user": doomed}, priority=4),
        "delete_again": _job(sql, "delete_user", {"directory_id": ad.id, "user": doomed}, priority=5),
        "enable": _job(sql, "enable_user", {"directory_id": ad.id, "user": "jo.bloggs"}, priority=5),
        "move": _job(sql, "move_user", {"organisation_id": other_org, "user": "jo.bloggs"}, priority=6),
        "unmember": _job(sql, "remove_group_member", {"organisation_id": 1, "group": "contoso-staff",
                                                      "member": "jo.bloggs"}, priority=7),
        "unmember_again": _job(sql, "remove_group_member", {"organisation_id": 1, "group": "contoso-staff",
                                                            "member": "jo.bloggs"}, priority=8),
    }
    out = _process(panel_db, T0 + timedelta(minutes=5))
    assert out["claimed"] == len(jobs) and out["succeeded"] == len(jobs), out
    states = {k: _state(sql, j) for k, j in jobs.items()}
    assert all(s[:2] == ("succeeded", 1) and s[3] is None for s in states.values()), states

    moved = f"CN=jo.bloggs,{other_dn}"
    guid = dc.guid(moved)
    group_dn = f"CN=Contoso Staff,{org_dn}"
    assert states["user"][2] == {"dn": f"CN=jo.bloggs,{org_dn}", "object_guid": guid, "sam_account_name": "jo.bloggs",
                                 "user_principal_name": "jo.bloggs@contoso.example", "created": True, "enabled": True,
                                 "must_change_password": False}
    assert "password" not in states["user"][4] and states["user"][4]["sam_account_name"] == "jo.bloggs"
    assert "password" not in states["reset"][4]
    assert states["group"][2] == {"dn": group_dn, "object_guid": dc.guid(group_dn), "group_id": 1, "created": True,
                                  "group_type": -2147483646}
    assert sql("SELECT organisation_id, sam_account_name, dn, security_enabled, auto_add_users FROM ad_groups") == [
        (1, "contoso-staff", group_dn, True, True)]
    assert states["member"][2]["added"] is True and states["member_again"][2]["already_member"] is True
    assert states["update"][2]["updated"] == ["department", "telephoneNumber", "title"]
    assert dc.get(moved, "title", "telephoneNumber", "department", "givenName", "sn", "displayName") == {
        "title": [b"CTO"], "telephoneNumber": [b"+44 20 7946 0000"], "department": [], "givenName": [b"Jo"],
        "sn": [b"Bloggs"], "displayName": [b"Jo Bloggs"]}
    assert not dc.bind_fails("jo.bloggs@contoso.example", "N3w!Passw0rd-x")        # the reset password works
    assert states["disable"][2]["user_account_control"] == 0x202 and states["disable"][2]["changed"] is True
    assert states["enable"][2]["user_account_control"] == 0x200 and ad.uac(moved) == 0x200
    assert states["unlock"][2]["was_locked"] is True and dc.get_int(locked, "lockoutTime") == 0
    assert states["delete"][2]["deleted"] is True and ad.find("(sAMAccountName=doomed)") == {}
    assert states["delete_again"][2] == {"user": doomed, "deleted": False, "already_absent": True}
    assert states["move"][2] == {"dn": moved, "object_guid": guid, "moved": True,
                                 "previous_dn": f"CN=jo.bloggs,{org_dn}"}
    assert states["unmember"][2]["removed"] is True and states["unmember_again"][2]["already_absent"] is True
    assert ad.members(group_dn) == set()

    # the same jobs again: each finds its state already there
    again = [_job(sql, "create_organization", {"directory_id": ad.id, "name": "Contoso"}),
             _job(sql, "create_user", {"organisation_id": 1, "sam_account_name": "jo.bloggs",
                                       "user_principal_name": "jo.bloggs@contoso.example", "password": PASSWORD}),
             _job(sql, "create_group", {"organisation_id": 1, "name": "Contoso Staff", "sam_account_name": "contoso-staff"}),
             _job(sql, "move_user", {"organisation_id": other_org, "user": guid})]
    assert _process(panel_db, T0 + timedelta(minutes=10))["succeeded"] == 4
    assert [_state(sql, j)[2].get("created", _state(sql, j)[2].get("moved")) for j in again] == [False] * 4
    assert _state(sql, again[1])[2]["dn"] == moved               # found where it was moved to
    assert len(ad.find("(sAMAccountName=jo.bloggs)")) == 1 and sql("SELECT count(*) FROM ad_groups") == [(1,)]


def test_priority_zero_runs_first(ad, panel_db, sql):
    org, org_dn = ad.org("Acme")
    # queued first but priority 5: if it ran before the create, it would find nothing and the user would stay
    delete = _job(sql, "delete_user", {"directory_id": ad.id, "user": "late"}, priority=5)
    creates = [_job(sql, "create_user", {"organisation_id": org, "sam_account_name": f"late{p or ''}",
                                         "user_principal_name": f"late{p or ''}@acme.example", "password": PASSWORD},
                    priority=p) for p in (9, 0, 4)]
    assert _process(panel_db)["succeeded"] == 4
    assert _state(sql, delete)[2]["deleted"] is True
    assert ad.find("(sAMAccountName=late)") == {}
    # uSNCreated numbers the DC's writes: priority 0, then 4 (and the delete at 5), then 9
    usn = {dn.split(",")[0]: int(a["uSNCreated"][0]) for dn, a in ad.find("(objectClass=user)", "uSNCreated").items()}
    assert usn["CN=late4"] < usn["CN=late9"]
    assert [_state(sql, j)[0] for j in creates] == ["succeeded"] * 3


def test_a_rejected_job_fails_with_the_dcs_message_and_the_next_job_still_runs(ad, panel_db, sql):
    org, org_dn = ad.org("Acme")
    weak = _job(sql, "create_user", {"organisation_id": org, "sam_account_name": "weak",
                                     "user_principal_name": "weak@acme.example", "password": "alllowercase"}, priority=1)
    missing = _job(sql, "reset_password", {"directory_id": ad.id, "user": "nobody", "password": PASSWORD}, priority=1)
    outside = _job(sql, "delete_user", {"directory_id": ad.id, "user": ad.dc.admin_dn}, priority=1)
    protected = _job(sql, "update_user", {"directory_id": ad.id, "user": "good", "attributes": {"cn": "x"}}, priority=1)
    ok = _job(sql, "create_user", {"organisation_id": org, "sam_account_name": "good",
                                   "user_principal_name": "good@acme.example", "password": PASSWORD}, priority=2)
    out = _process(panel_db)
    assert (out["failed"], out["succeeded"]) == (4, 1), out
    status, attempts, result, error, payload = _state(sql, weak)
    assert (status, attempts, result) == ("failed", 1, None)
    assert "constraintViolation (19)" in error and "the password does not meet the complexity criteria" in error
    assert "password" not in payload                                             # not kept once failed
    assert ad.find("(sAMAccountName=weak)") == {}
    assert "no user 'nobody'" in _state(sql, missing)[3]
    assert "outside the managed subtree" in _state(sql, outside)[3] and not ad.dc.bind_fails(
        ad.dc.admin_user, ad.dc.admin_password)
    assert _state(sql, protected)[3] == "attributes: cn cannot be written by this action"
    assert _state(sql, ok)[2]["created"] is True and len(ad.find("(sAMAccountName=good)")) == 1


def test_an_unreachable_directory_keeps_the_job_pending_until_its_attempts_run_out(ad, panel_db, sql, monkeypatch):
    from panelflow.dev.postgres import free_port

    monkeypatch.setenv("AIRFLOW_CONN_AD_TEST", ad.dc.connection(port=free_port()))       # nothing listens there
    job = _job(sql, "disable_user", {"directory_id": ad.id, "user": "anyone"})
    second = _job(sql, "enable_user", {"directory_id": ad.id, "user": "anyone"})
    out = _process(panel_db, job_max_attempts=2)
    assert out["retry_later"] == 2, out
    status, attempts, result, error, _ = _state(sql, job)
    assert (status, attempts, result) == ("pending", 1, None)
    assert error.startswith("directory test: ") and "LDAPSocketOpenError" in error
    # the run does not knock again for its next job of that directory
    assert _state(sql, second)[3] == error + " (earlier in this run)"
    sql("UPDATE group_action_jobs SET status = 'succeeded' WHERE id = %s", (second,))

    out = _process(panel_db, T0 + timedelta(minutes=5), job_max_attempts=2)
    status, attempts, _, error, _ = _state(sql, job)
    assert (out["failed"], status, attempts) == (1, "failed", 2)
    assert error.startswith("attempt 2 of 2: directory test: ")

    # the DC back: a new job runs
    monkeypatch.setenv("AIRFLOW_CONN_AD_TEST", ad.dc.connection())
    user = ad.user(ad.base, "anyone")
    again = _job(sql, "disable_user", {"directory_id": ad.id, "user": "anyone"})
    assert _process(panel_db, T0 + timedelta(minutes=10))["succeeded"] == 1
    assert _state(sql, again)[2]["changed"] is True and ad.uac(user) == 0x202


def test_two_processors_racing_on_one_queue_run_each_job_once(ad, panel_db, sql):
    from panelflow.hooks.panel_db import PanelDatabaseHook
    from panelflow.steps.active_directory.jobs import process_ad_group_actions

    org, org_dn = ad.org("Race")
    jobs = [_job(sql, "create_user", {"organisation_id": org, "sam_account_name": f"racer{i:02}",
                                      "user_principal_name": f"racer{i:02}@race.example", "password": PASSWORD},
                 priority=i % 3) for i in range(16)]
    start = threading.Barrier(2)
    outcomes, errors = [], []

    def processor():
        try:
            hook = PanelDatabaseHook()                 # its own hook and DB connections
            start.wait(10)
            outcomes.append(process_ad_group_actions(hook, _at(), {}, None))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=processor) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    assert sum(o["claimed"] for o in outcomes) == 16 and all(o["claimed"] > 0 for o in outcomes), outcomes
    assert sql("SELECT status, attempts, count(*) FROM group_action_jobs GROUP BY 1, 2") == [("succeeded", 1, 16)]
    assert all(_state(sql, j)[2]["created"] is True for j in jobs)                  # nobody ran a job twice
    users = ad.find("(sAMAccountName=racer*)", "sAMAccountName")
    assert sorted(a["sAMAccountName"][0].decode() for a in users.values()) == [f"racer{i:02}" for i in range(16)]


# -- AutoAddUsersInSecurityGroupWork 1 ---------------------------------------------------------------


def test_auto_add_puts_the_organisations_users_in_its_security_groups_once(ad, panel_db, sql):
    dc = ad.dc
    org, org_dn = ad.org("Acme")
    sub = dc.add_ou("Sales", parent=org_dn)
    users = {s: ad.user(org_dn if s != "sue" else sub, s, **({"department": "Sales"} if s in ("sue", "sam") else {}))
             for s in ("ann", "bob", "sue", "sam")}
    off = ad.user(org_dn, "off", enabled=False)
    outsider = ad.user(ad.base, "outsider")           # not in the organisation's OU
    everyone = dc.add_group(org_dn, "Everyone", [users["ann"]])
    sales = dc.add_group(org_dn, "Sales team")
    mailing = dc.add_group(org_dn, "Newsletter", security=False)
    ghost = dc.add_group(org_dn, "Ghost")
    rows = {}
    for name, dn in (("everyone", everyone), ("sales", sales), ("mailing", mailing), ("ghost", ghost)):
        (rows[name],) = sql("INSERT INTO ad_groups (directory_id, organisation_id, object_guid, dn, auto_add_users)"
                            " VALUES (%s, %s, %s, %s, true) RETURNING id", (ad.id, org, dc.guid(dn), dn))[0]
    sql("INSERT INTO ad_group_auto_add_settings (group_id, user_filter) VALUES (%s, '(department=Sales)')",
        (rows["sales"],))
    dc.delete(ghost)

    out = _step("add_users_to_security_groups", panel_db)
    assert (out["groups"], out["groups_done"], out["users_added"], out["already_members"]) == (4, 2, 5, 1), out
    assert ad.members(everyone) == {users["ann"], users["bob"], users["sue"], users["sam"]}   # not the disabled one
    assert ad.members(sales) == {users["sue"], users["sam"]}
    assert ad.members(mailing) == set() and off not in ad.members(everyone) and outsider not in ad.members(everyone)
    assert sorted(out["skipped_examples"]) == sorted([f"group {rows['mailing']} ({mailing}): not a security group",
                                                      f"group {rows['ghost']} ({ghost}): the group is not in the directory"])
    assert sql("SELECT group_id, last_run_at, last_added, last_error FROM ad_group_auto_add_settings ORDER BY 1") == [
        (rows["everyone"], T0, 3, None), (rows["sales"], T0, 2, None), (rows["mailing"], T0, 0, "not a security group"),
        (rows["ghost"], T0, 0, "the group is not in the directory")]
    assert sql("SELECT count(*) FROM ad_group_members WHERE group_id = %s", (rows["everyone"],)) == [(3,)]

    # a rerun adds nobody; a new user is added next time; the disabled one when asked for
    again = _step("add_users_to_security_groups", panel_db, T0 + timedelta(minutes=30))
    assert (again["users_added"], again["already_members"]) == (0, 6), again
    new = ad.user(sub, "neo")
    sql("UPDATE ad_group_auto_add_settings SET include_disabled = true WHERE group_id = %s", (rows["everyone"],))
    third = _step("add_users_to_security_groups", panel_db, T0 + timedelta(minutes=60))
    assert third["users_added"] == 2 and ad.members(everyone) >= {new, off}


# -- AutoAddUsersInSecurityGroupWork 2 ---------------------------------------------------------------


def test_cn_follows_a_changed_upn_and_a_collision_is_reported(ad, panel_db, sql):
    dc = ad.dc
    org, org_dn = ad.org("Acme")
    jo = ad.user(org_dn, "jo", cn="Jo Bloggs")
    kim = ad.user(org_dn, "kim")
    ad.user(org_dn, "taken")
    sql("INSERT INTO ad_users (directory_id, organisation_id, object_guid, sam_account_name, user_principal_name, cn, dn)"
        " VALUES (%s, %s, %s, 'jo', 'jo@test.local', 'Jo Bloggs', %s)", (ad.id, org, dc.guid(jo), jo))

    first = _step("change_cn_on_upn_change", panel_db)
    assert (first["users"], first["first_seen"], first["renamed"]) == (3, 3, 0), first     # only remembered
    assert dc.get(jo, "cn")["cn"] == [b"Jo Bloggs"]

    dc.modify(jo, userPrincipalName="joanna.bloggs@acme.example")
    dc.modify(kim, userPrincipalName="taken@acme.example")
    out = _step("change_cn_on_upn_change", panel_db, T0 + timedelta(minutes=30))
    new_jo = f"CN=joanna.bloggs,{org_dn}"
    assert (out["upn_changed"], out["renamed"], out["collisions"]) == (2, 1, 1), out
    assert out["skipped_examples"] == [f"{kim}: CN collision: CN=taken,{org_dn} already exists"]
    assert dc.get(new_jo, "cn", "userPrincipalName") == {"cn": [b"joanna.bloggs"],
                                                         "userPrincipalName": [b"joanna.bloggs@acme.example"]}
    assert dc.guid(new_jo) == str(sql("SELECT object_guid FROM ad_users")[0][0])
    assert sql("SELECT cn, dn, user_principal_name FROM ad_users") == [
        ("joanna.bloggs", new_jo, "joanna.bloggs@acme.example")]
    assert sql("SELECT user_principal_name, cn, dn, renamed_at FROM ad_user_cn_upn WHERE object_guid = %s",
               (dc.guid(new_jo),)) == [("joanna.bloggs@acme.example", "joanna.bloggs", new_jo, T0 + timedelta(minutes=30))]
    # the collided user keeps its remembered UPN, so it is tried again next run
    assert sql("SELECT user_principal_name FROM ad_user_cn_upn WHERE object_guid = %s", (dc.guid(kim),)) == [
        ("kim@test.local",)]
    rerun = _step("change_cn_on_upn_change", panel_db, T0 + timedelta(minutes=60))
    assert (rerun["renamed"], rerun["collisions"], rerun["upn_changed"]) == (0, 1, 1), rerun
    dc.delete(f"CN=taken,{org_dn}")
    last = _step("change_cn_on_upn_change", panel_db, T0 + timedelta(minutes=90))
    assert last["renamed"] == 1 and dc.get(f"CN=taken,{org_dn}", "sAMAccountName")["sAMAccountName"] == [b"kim"]

    # renamed already (a run that died before recording, or by hand): only remembered, the panel follows
    dc.modify(new_jo, userPrincipalName="jb@acme.example")
    dc.ldap().modify_dn(new_jo, "CN=jb")
    caught_up = _step("change_cn_on_upn_change", panel_db, T0 + timedelta(minutes=120))
    assert (caught_up["renamed"], caught_up["cn_already_matches"]) == (0, 1), caught_up
    assert sql("SELECT cn, dn, user_principal_name FROM ad_users") == [("jb", f"CN=jb,{org_dn}", "jb@acme.example")]
    assert _step("change_cn_on_upn_change", panel_db, T0 + timedelta(minutes=150))["upn_changed"] == 0


# -- GroupActionWorkAD 4 -----------------------------------------------------------------------------------


def test_accounts_of_non_user_mailboxes_are_disabled_and_never_re_enabled(ad, panel_db, sql):
    dc = ad.dc
    org, org_dn = ad.org("Acme")
    shared = ad.user(org_dn, "sales-inbox")
    room = ad.user(org_dn, "room-1", enabled=False)
    person = ad.user(org_dn, "person")
    kit = ad.user(org_dn, "projector")
    types = [(shared, "shared"), (room, "room"), (person, "user"), (kit, "equipment")]
    for dn, kind in types:
        sql("INSERT INTO ad_user_mailbox_types (directory_id, object_guid, mailbox_type, updated_at) VALUES (%s, %s, %s, %s)",
            (ad.id, dc.guid(dn), kind, T0 - timedelta(days=1)))
    sql("INSERT INTO ad_user_mailbox_types (directory_id, object_guid, mailbox_type, updated_at) VALUES (%s, %s, 'shared', %s)",
        (ad.id, uuid.uuid4(), T0))                                                       # its user is gone
    sql("INSERT INTO ad_users (directory_id, object_guid, dn, enabled, user_account_control) VALUES (%s, %s, %s, true, 512)",
        (ad.id, dc.guid(shared), shared))

    out = _step("disable_logins_by_mailbox_type", panel_db)
    assert (out["checked"], out["disabled"], out["already_disabled"], out["not_in_directory"]) == (3, 2, 1, 1), out
    assert (ad.uac(shared), ad.uac(room), ad.uac(person), ad.uac(kit)) == (0x202, 0x202, 0x200, 0x202)
    assert sql("SELECT dn, mailbox_type, type_source, first_disabled_at, disabled_at, times FROM ad_mailbox_login_disables"
               " ORDER BY dn") == [(kit, "equipment", "panel", T0, T0, 1), (shared, "shared", "panel", T0, T0, 1)]
    assert sql("SELECT enabled, user_account_control FROM ad_users") == [(False, 0x202)]
    assert sql("SELECT count(*) FROM ad_user_mailbox_types WHERE checked_at = %s", (T0,)) == [(4,)]

    # a rerun changes nothing
    assert _step("disable_logins_by_mailbox_type", panel_db, T0 + timedelta(minutes=5))["disabled"] == 0
    # the mailbox converted back to a user mailbox: the account is NOT re-enabled
    sql("UPDATE ad_user_mailbox_types SET mailbox_type = 'user' WHERE object_guid = %s", (dc.guid(kit),))
    _step("disable_logins_by_mailbox_type", panel_db, T0 + timedelta(minutes=10))
    assert ad.uac(kit) == 0x202
    # someone re-enables a still-shared mailbox's account: it is disabled again
    dc.modify(shared, userAccountControl="512")
    again = _step("disable_logins_by_mailbox_type", panel_db, T0 + timedelta(minutes=15))
    assert again["disabled"] == 1 and ad.uac(shared) == 0x202
    assert sql("SELECT first_disabled_at, disabled_at, times FROM ad_mailbox_login_disables WHERE dn = %s", (shared,)) == [
        (T0, T0 + timedelta(minutes=15), 2)]


def test_exchanges_recipient_type_decides_over_the_panels():
    """Samba has no Exchange schema, so this rule is shown on its own: msExchRecipientTypeDetails,
    where AD has it, decides; otherwise the panel's type."""
    from panelflow.steps.active_directory.mailbox_logins import no_login_mailbox

    assert no_login_mailbox(4, None) == ("shared", "ad")
    assert no_login_mailbox(16, "user") == ("room", "ad")              # converted in Exchange
    assert no_login_mailbox(1, "shared") is None                       # Exchange says user mailbox
    assert no_login_mailbox(128, "shared") is None                     # a mail user: no local mailbox
    assert no_login_mailbox(None, "equipment") == ("equipment", "panel")
    assert no_login_mailbox(None, "user") is None and no_login_mailbox(None, None) is None


# -- GroupActionWorkAD 5 -----------------------------------------------------------------------------------


def test_hostmatic_database_users_follow_renames_and_deletions_with_one_backend_job_each(ad, panel_db, sql):
    dc = ad.dc
    org, org_dn = ad.org("Hosting")
    ann, bob, cat = (ad.user(org_dn, s) for s in ("ann", "bob", "cat"))
    (legacy,) = sql("INSERT INTO ad_directories (name, conn_id, base_dn, enabled) VALUES ('legacy', 'ad_legacy',"
                    " 'DC=legacy,DC=test', false) RETURNING id")[0]

    def db_user(guid, sam, engine, server, prefix, directory=None):
        return sql("INSERT INTO hosting_database_users (directory_id, ad_object_guid, ad_sam_account_name, engine,"
                   " db_server, login_prefix) VALUES (%s, %s, %s, %s, %s, %s) RETURNING id",
                   (directory or ad.id, guid, sam, engine, server, prefix))[0][0]

    ann_sql = db_user(dc.guid(ann), "ann", "mssql", "sql1", "TEST\\")
    ann_my = db_user(dc.guid(ann), "ann", "mysql", "my1", "hosting_customer_0007_")
    bob_sql = db_user(dc.guid(bob), "bob", "mssql", "sql1", "TEST\\")
    cat_my = db_user(dc.guid(cat), "cat", "mysql", "my1", "h7_")
    ghost_sql = db_user(uuid.uuid4(), "ghost", "mssql", "sql2", "TEST\\")      # its AD user is long gone
    db_user(uuid.uuid4(), "robert", "mssql", "sql1", "TEST\\", directory=legacy)   # another directory's login

    dc.modify(ann, sAMAccountName="ann.lee")
    dc.modify(bob, sAMAccountName="bob2")
    dc.delete(cat)
    out = _step("rename_delete_hostmatic_db_users", panel_db)
    assert (out["checked"], out["renamed"], out["deleted"], out["jobs_queued"]) == (5, 3, 2, 5), out
    assert dict(sql("SELECT id, login_name FROM hosting_database_users WHERE directory_id = %s", (ad.id,))) == {
        ann_sql: "TEST\\ann.lee", ann_my: "hosting_customer_0007_ann.lee", bob_sql: "TEST\\bob2"}
    jobs = sql("SELECT backend, action, payload, status, priority FROM group_action_jobs ORDER BY id")
    assert {(j[0], j[3], j[4]) for j in jobs} == {("hostmatic", "pending", 5)}
    renames = sorted((j[2]["database_user_id"], j[2]["old_login"], j[2]["new_login"]) for j in jobs
                     if j[1] == "rename_database_user")
    assert renames == [(ann_sql, "TEST\\ann", "TEST\\ann.lee"),
                       (ann_my, "hosting_customer_0007_ann", "hosting_customer_0007_ann.lee"),
                       (bob_sql, "TEST\\bob", "TEST\\bob2")]
    deletes = sorted((j[2]["database_user_id"], j[2]["login"], j[2]["engine"], j[2]["db_server"]) for j in jobs
                     if j[1] == "delete_database_user")
    assert deletes == [(cat_my, "h7_cat", "mysql", "my1"), (ghost_sql, "TEST\\ghost", "mssql", "sql2")]
    assert next(j[2] for j in jobs if j[1] == "rename_database_user" and j[2]["database_user_id"] == ann_sql) == {
        "database_user_id": ann_sql, "engine": "mssql", "db_server": "sql1", "old_login": "TEST\\ann",
        "new_login": "TEST\\ann.lee", "ad_object_guid": dc.guid(ann),
        "old_sam_account_name": "ann", "new_sam_account_name": "ann.lee", "directory_id": ad.id}

    # a rerun queues nothing more
    again = _step("rename_delete_hostmatic_db_users", panel_db, T0 + timedelta(minutes=5))
    assert (again["checked"], again["renamed"], again["deleted"], again["jobs_queued"]) == (3, 0, 0, 0), again
    assert sql("SELECT count(*) FROM group_action_jobs") == [(5,)]

    # a new name already a login on that server, or too long for MySQL: reported, the row left as it was
    dc.modify(bob, sAMAccountName="robert")
    dc.modify(ann, sAMAccountName="ann.lee-smith")
    third = _step("rename_delete_hostmatic_db_users", panel_db, T0 + timedelta(minutes=10))
    assert (third["renamed"], third["jobs_queued"]) == (1, 1), third         # ann's MSSQL login only
    assert sorted(third["skipped_examples"]) == [
        f"database user {ann_my} (hosting_customer_0007_ann.lee): not renamed:"
        " 'hosting_customer_0007_ann.lee-smith' is longer than 32 characters",
        f"database user {bob_sql} (TEST\\bob2): not renamed: 'TEST\\\\robert' is already a login on mssql sql1"]
    assert dict(sql("SELECT id, login_name FROM hosting_database_users WHERE directory_id = %s", (ad.id,))) == {
        ann_sql: "TEST\\ann.lee-smith", ann_my: "hosting_customer_0007_ann.lee", bob_sql: "TEST\\bob2"}


# -- AutoAddUsersInSecurityGroupWork 3 ---------------------------------------------------------------


def test_system_alerts_open_stay_and_resolve(ad, panel_db, sql, monkeypatch):
    from panelflow.dev.postgres import free_port
    from panelflow.hooks.active_directory import datetime_to_filetime

    dc = ad.dc
    org, org_dn = ad.org("Acme")
    locked = ad.user(org_dn, "locked")
    stale = ad.user(org_dn, "stale")
    forever = ad.user(org_dn, "forever")
    dc.modify(forever, userAccountControl=str(0x10200))        # password never expires
    ad.user(org_dn, "off", enabled=False)
    dc.modify(locked, lockoutTime=str(datetime_to_filetime(datetime.now(timezone.utc))))
    # the run's clock is 60 days on: every password set today (max age 42 days) has expired by then
    at = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(days=60)
    failed = sql("INSERT INTO group_action_jobs (backend, action, status, error, finished_at, attempts)"
                 " VALUES ('ad', 'create_user', 'failed', %s, %s, 1) RETURNING id",
                 ("create user: constraintViolation (19): password too short\nmore", at - timedelta(hours=1)))[0][0]
    sql("INSERT INTO group_action_jobs (backend, action, status, error, finished_at) VALUES ('ad', 'x', 'failed', 'old', %s)",
        (at - timedelta(days=3),))                                               # outside the window
    monkeypatch.setenv("AIRFLOW_CONN_AD_DOWN", dc.connection(port=free_port()))
    (down,) = sql("INSERT INTO ad_directories (name, conn_id, base_dn) VALUES ('down', 'ad_down', %s) RETURNING id",
                  (ad.base,))[0]

    out = _step("sync_system_alerts", panel_db, at)
    assert (out["opened"], out["resolved"], out["directories_failed"]) == (5, 0, 1), out

    def open_alerts():
        return {(t, k): (sev, title) for t, k, sev, title in sql(
            "SELECT alert_type, object_key, severity, title FROM system_alerts WHERE resolved_at IS NULL")}

    g = dc.guid
    alerts = open_alerts()
    assert set(alerts) == {("ad_account_locked", f"directory:{ad.id}/user:{g(locked)}"),
                           ("ad_password_expired", f"directory:{ad.id}/user:{g(locked)}"),
                           ("ad_password_expired", f"directory:{ad.id}/user:{g(stale)}"),
                           ("group_action_failed", f"job:{failed}"),
                           ("ad_directory_unreachable", f"directory:{down}")}
    assert alerts[("ad_account_locked", f"directory:{ad.id}/user:{g(locked)}")] == (
        "warning", "Account locked@test.local is locked out")
    assert alerts[("group_action_failed", f"job:{failed}")] == (
        "warning", f"Group action {failed} (ad create_user) failed: create user: constraintViolation (19): password too short")
    assert alerts[("ad_directory_unreachable", f"directory:{down}")] == ("critical", "Directory down cannot be reached")
    assert sql("SELECT detail->>'dn' FROM system_alerts WHERE alert_type = 'ad_account_locked'") == [(locked,)]
    (detail,) = sql("SELECT detail FROM system_alerts WHERE alert_type = 'group_action_failed'")[0]
    assert datetime.fromisoformat(detail.pop("failed_at")) == at - timedelta(hours=1)
    assert detail == {"job_id": failed, "backend": "ad", "action": "create_user",
                      "error": "create user: constraintViolation (19): password too short\nmore"}

    # the same interval again: the same rows; a later run moves last_seen_at only
    rerun = _step("sync_system_alerts", panel_db, at)
    assert (rerun["opened"], rerun["resolved"]) == (0, 0) and sql("SELECT count(*) FROM system_alerts") == [(5,)]
    later = at + timedelta(minutes=30)
    _step("sync_system_alerts", panel_db, later)
    assert sql("SELECT DISTINCT opened_at, last_seen_at FROM system_alerts") == [(at, later)]

    # the conditions clear: unlocked, password made never-expiring, job re-queued, directory switched off
    dc.modify(locked, lockoutTime="0")
    dc.modify(stale, userAccountControl=str(0x10200))
    sql("UPDATE group_action_jobs SET status = 'pending' WHERE id = %s", (failed,))
    sql("UPDATE ad_directories SET enabled = false WHERE id = %s", (down,))
    last = at + timedelta(hours=1)
    final = _step("sync_system_alerts", panel_db, last)
    assert (final["opened"], final["resolved"]) == (0, 4), final
    assert set(open_alerts()) == {("ad_password_expired", f"directory:{ad.id}/user:{g(locked)}")}
    assert sql("SELECT count(*) FROM system_alerts WHERE resolved_at = %s", (last,)) == [(4,)]


def test_steps_with_no_directory_do_nothing_and_fail_only_when_every_directory_fails(panel_db, sql, monkeypatch):
    from panelflow.dev.postgres import free_port
    from panelflow.steps.active_directory.jobs import ACTIONS

    for name in ("disable_logins_by_mailbox_type", "rename_delete_hostmatic_db_users", "add_users_to_security_groups",
                 "change_cn_on_upn_change"):
        assert _step(name, panel_db)["directories"] == 0
    assert _process(panel_db)["claimed"] == 0 and len(ACTIONS) == 12
    monkeypatch.setenv("AIRFLOW_CONN_AD_GONE", json.dumps({"conn_type": "panelflow_active_directory",
                                                           "host": "127.0.0.1", "port": free_port(),
                                                           "login": "x@test.local", "password": "x",
                                                           "extra": {"use_ssl": True, "validate_cert": False,
                                                                     "connect_timeout": 2}}))
    sql("INSERT INTO ad_directories (name, conn_id, base_dn) VALUES ('gone', 'ad_gone', 'DC=gone,DC=test')")
    with pytest.raises(RuntimeError, match="every AD directory failed: gone: "):
        _step("change_cn_on_upn_change", panel_db)
