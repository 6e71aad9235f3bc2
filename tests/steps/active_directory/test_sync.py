"""Active Directory (panelflow.hooks.active_directory, panelflow.steps.active_directory) against a real
Samba 4 domain controller on 127.0.0.1 (tests/samba_dc.py) and the real panel DB.

Each test works in its own OU (``samba_ou``), used as its directories' ``base_dn``: the OUs under
it are the organisations. Times in AD are the DC's real clock, so intervals here are laid on the
times AD reports (``pwdLastSet``), not on a fixed date.
"""

from __future__ import annotations

import importlib
import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from panelflow.step import Interval
from harness.samba_dc import DEFAULT_USER_PASSWORD, samba_dc, samba_ou  # noqa: F401 - fixtures

T0 = datetime.now(timezone.utc).replace(microsecond=0)
# the module of panelflow.steps.active_directory each step lives in
STEP_MODULES = {"sync_ad_users": "sync", "sync_locked_users": "lockouts", "send_password_expiry_notices": "notices",
                "sync_staff_users": "staff", "sync_rds_users": "rds", "update_ad_extended_data": "user_details",
                "sync_ad_user_services": "user_details"}
AD_TABLES = "ad_directories"     # every other AD table references it (TRUNCATE … CASCADE)


def _at(end):
    return Interval(end - timedelta(hours=1), end)


def _filetime(dc, dn, attribute):
    from panelflow.hooks.active_directory import filetime_to_datetime

    return filetime_to_datetime(dc.get_int(dn, attribute))


@pytest.fixture
def ad(panel_db, sql, samba_dc, samba_ou, monkeypatch):
    """``ad.directory(name, base_dn=samba_ou, **conn_changes)`` → directory id (connection
    ``ad_<name>`` wired to the DC); ``ad.run(step, end, **params)`` runs a step."""
    sql(f"TRUNCATE {AD_TABLES} RESTART IDENTITY CASCADE")

    class Ctx:
        dc, base = samba_dc, samba_ou

        @staticmethod
        def directory(name="corp", base_dn=None, rds_group_dn=None, **changes):
            conn_id = f"ad_{name}"
            monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", samba_dc.connection(**changes))
            return sql("INSERT INTO ad_directories (name, conn_id, base_dn, rds_group_dn) VALUES (%s, %s, %s, %s)"
                       " RETURNING id", (name, conn_id, base_dn or samba_ou, rds_group_dn))[0][0]

        @staticmethod
        def run(step, end=T0, **params):
            steps = importlib.import_module(f"panelflow.steps.active_directory.{STEP_MODULES[step]}")
            return getattr(steps, step)(panel_db, _at(end), params, None)

    yield Ctx
    sql(f"TRUNCATE {AD_TABLES} RESTART IDENTITY CASCADE")


def _user(sql, guid):
    rows = sql("SELECT sam_account_name, user_principal_name, dn, display_name, mail, enabled, deleted,"
               " organisation_id, locked, lockout_time, password_last_set, password_expires_at, cn"
               " FROM ad_users WHERE object_guid = %s", (guid,))
    return rows[0] if rows else None


# -- the hook -------------------------------------------------------------------------------------

def test_hook_modify_operations_and_errors(samba_dc, samba_ou, monkeypatch):
    from panelflow.hooks.active_directory import (ActiveDirectoryHook, ActiveDirectoryRejected,
                                                  ActiveDirectoryUnavailable, datetime_to_filetime,
                                                  filetime_to_datetime, generalized_time)

    dc = samba_dc
    org = dc.add_ou("Org", samba_ou)
    other = dc.add_ou("Other", samba_ou)
    user = dc.add_user(org, "hook.user", mail="hook.user@example.test")
    group = dc.add_group(org, "Hook Group")
    monkeypatch.setenv("AIRFLOW_CONN_AD_HOOK", dc.connection(base_dn=samba_ou))
    with ActiveDirectoryHook("ad_hook") as hook:
        assert hook.base_dn == samba_ou
        dse = hook.root_dse()
        assert dse["defaultNamingContext"] == "DC=test,DC=local" and dse["highestCommittedUSN"] > 0
        assert isinstance(dse["invocationId"], uuid.UUID)
        # membership: idempotent both ways, members come back with their GUIDs
        assert hook.add_member(group, user) is True
        assert hook.add_member(group, user) is False
        assert hook.members_with_guids(group) == [(uuid.UUID(dc.guid(user)), user)]
        # a large group's members come range by range (AD: 1500 a time; here 2 a time, asked for)
        more = [dc.add_user(org, f"hook.m{i}") for i in range(4)]
        dc.add_members(group, *more)
        ranged = hook.members_with_guids(group, per_range=2)
        assert sorted(ranged) == sorted((uuid.UUID(dc.guid(dn)), dn) for dn in [user, *more])
        dc.remove_members(group, *more)
        assert hook.remove_member(group, user) is True
        assert hook.remove_member(group, user) is False
        assert dc.get(group, "member")["member"] == []
        # CN rename (a comma in the new name is escaped), move, enable/disable, attributes, password
        renamed = hook.rename(user, "CN=User, Renamed")
        assert renamed == f"CN=User\\, Renamed,{org}" and dc.get(renamed, "cn")["cn"] == [b"User, Renamed"]
        moved = hook.move(renamed, other)
        assert moved == f"CN=User\\, Renamed,{other}"
        assert hook.set_enabled(moved, False) == 0x202 and dc.get_int(moved, "userAccountControl") == 0x202
        assert hook.set_enabled(moved, True) == 0x200 and dc.get_int(moved, "userAccountControl") == 0x200
        hook.replace_attributes(moved, {"title": "CTO", "telephoneNumber": "+44 20 7946 0000", "mail": None})
        got = dc.get(moved, "title", "telephoneNumber", "mail")
        assert got == {"title": [b"CTO"], "telephoneNumber": [b"+44 20 7946 0000"], "mail": []}
        hook.set_password(moved, "N3w!Passw0rd-1")
        assert hook.check_credentials("hook.user@test.local", "N3w!Passw0rd-1") is True
        assert hook.check_credentials("hook.user@test.local", "not-the-password") is False
        entry = hook.get(moved, ["pwdLastSet", "whenChanged", "objectGUID", "objectSid"])
        assert entry.guid() == uuid.UUID(dc.guid(moved)) and entry.sid().startswith("S-1-5-21-")
        assert abs(entry.filetime("pwdLastSet") - datetime.now(timezone.utc)) < timedelta(minutes=1)
        # rejected: an LDAP result code, not worth retrying
        with pytest.raises(ActiveDirectoryRejected) as rejected:
            hook.replace_attributes(f"CN=nobody,{org}", {"title": "x"})
        assert rejected.value.result == 32 and rejected.value.description == "noSuchObject"
        with pytest.raises(ActiveDirectoryRejected) as rejected:
            hook.add(f"CN=Hook Group,{org}", "group", {"sAMAccountName": "Hook Group"})
        assert rejected.value.result == 68
        assert hook.get(f"CN=nobody,{org}", ["cn"]) is None
    # unavailable: nothing listens on the port / the DC refuses the credentials
    monkeypatch.setenv("AIRFLOW_CONN_AD_DOWN", dc.connection(port=1, use_ssl=True))
    with pytest.raises(ActiveDirectoryUnavailable):
        ActiveDirectoryHook("ad_down").get_conn()
    monkeypatch.setenv("AIRFLOW_CONN_AD_BADPW", dc.connection(password="wrong"))
    with pytest.raises(ActiveDirectoryUnavailable, match="refused the credentials"):
        ActiveDirectoryHook("ad_badpw").get_conn()
    # unicodePwd only inside TLS: refused before anything is sent
    monkeypatch.setenv("AIRFLOW_CONN_AD_PLAIN", dc.connection(port=389, use_ssl=False))
    with pytest.raises(ValueError, match="needs use_ssl or start_tls"):
        ActiveDirectoryHook("ad_plain").set_password(moved, "x")
    # conversions
    when = datetime(2026, 3, 2, 10, 0, 0, 123456, tzinfo=timezone.utc)
    assert filetime_to_datetime(datetime_to_filetime(when)) == when
    assert filetime_to_datetime(0) is None and filetime_to_datetime(0x7FFFFFFFFFFFFFFF) is None
    assert filetime_to_datetime(134397958653322440) == datetime(2026, 11, 22, 4, 37, 45, 332244, tzinfo=timezone.utc)
    assert generalized_time("20261122043233.0Z") == datetime(2026, 11, 22, 4, 32, 33, tzinfo=timezone.utc)


# -- SyncADUsersWork -------------------------------------------------------------------------------

def test_full_then_incremental_sync_reads_and_writes_only_what_changed(ad, sql):
    dc = ad.dc
    org_a, org_b = dc.add_ou("Contoso", ad.base, description="Contoso Ltd"), dc.add_ou("Fabrikam", ad.base)
    sub = dc.add_ou("Sales", org_a)
    users_a = [dc.add_user(org_a, f"ca{i:02}", mail=f"ca{i:02}@contoso.example", displayName=f"Contoso {i}")
               for i in range(12)]
    users_b = [dc.add_user(org_b, f"fb{i:02}", upn_suffix="fabrikam.example") for i in range(6)]
    sales = dc.add_user(sub, "ca.sales", mail="sales@contoso.example")
    disabled = dc.add_user(org_b, "fb.disabled", enabled=False)
    stray = dc.add_user(ad.base, "stray.user")                          # in no organisation
    group = dc.add_group(org_a, "Contoso Staff", members=users_a[:3])
    dc.modify(org_a, uPNSuffixes=["contoso.example", "Contoso.co.uk"])
    directory = ad.directory("corp")

    first = ad.run("sync_ad_users", T0)
    assert first["directories"]["corp"]["mode"] == "full"
    assert first["users_read"] == 21 and first["users_written"] == 20 and first["users_inserted"] == 20
    assert first["users_skipped"] == 1 and first["skipped"] == {"user outside any organisation OU": 1}
    assert stray in first["skipped_examples"][0]
    assert first["organisations_written"] == 2 and first["groups_written"] == 1 and first["members_written"] == 3
    orgs = dict(sql("SELECT name, id FROM ad_organisations WHERE directory_id = %s", (directory,)))
    assert set(orgs) == {"Contoso", "Fabrikam"}
    assert sql("SELECT dn, description, upn_suffixes FROM ad_organisations WHERE id = %s", (orgs["Contoso"],)) == [
        (org_a, "Contoso Ltd", ["contoso.example", "contoso.co.uk"])]
    guid = dc.guid(users_a[0])
    row = _user(sql, guid)
    assert row[:9] == ("ca00", "ca00@test.local", users_a[0], "Contoso 0", "ca00@contoso.example", True, False,
                       orgs["Contoso"], False)
    assert row[10] == _filetime(dc, users_a[0], "pwdLastSet")
    assert row[11] == _filetime(dc, users_a[0], "msDS-UserPasswordExpiryTimeComputed")
    assert row[11] - row[10] == timedelta(days=42)                    # the provisioned max password age
    assert _user(sql, dc.guid(sales))[7] == orgs["Contoso"]            # a sub-OU belongs to its organisation
    assert _user(sql, dc.guid(disabled))[5] is False
    assert _user(sql, dc.guid(stray)) is None
    assert sql("SELECT m.member_guid::text FROM ad_group_members m JOIN ad_groups g ON g.id = m.group_id"
               " WHERE g.dn = %s ORDER BY 1", (group,)) == sorted((dc.guid(u),) for u in users_a[:3])
    assert sql("SELECT suffix, source FROM ad_upn_suffixes WHERE directory_id = %s ORDER BY suffix", (directory,)) == [
        ("contoso.co.uk", "organisation"), ("contoso.example", "organisation"), ("test.local", "domain")]
    state = sql("SELECT usn_watermark, dc_invocation_id, last_full_at FROM ad_sync_state WHERE directory_id = %s",
                (directory,))[0]
    assert state[0] > 0 and state[2] == T0

    # a rerun: nothing changed, nothing read or written
    again = ad.run("sync_ad_users", T0)
    assert again["directories"]["corp"]["mode"] == "incremental"
    assert (again["users_read"], again["users_written"], again["groups_read"]) == (0, 0, 0)

    # three users changed, one disabled, one new, one deleted, a group member added
    for dn in users_a[3:6]:
        dc.modify(dn, displayName="Changed")
    dc.modify(users_b[0], userAccountControl="514")
    new = dc.add_user(org_b, "fb.new", mail="new@fabrikam.example")
    gone_guid = dc.guid(users_b[1])
    dc.delete(users_b[1])
    dc.add_members(group, users_a[4])
    t1 = T0 + timedelta(hours=1)
    second = ad.run("sync_ad_users", t1)
    assert second["directories"]["corp"]["mode"] == "incremental"
    assert second["users_read"] == 5 and second["users_written"] == 5 and second["users_inserted"] == 1
    assert second["users_deleted"] == 1 and second["groups_written"] == 1 and second["members_written"] == 1
    assert [_user(sql, dc.guid(dn))[3] for dn in users_a[3:6]] == ["Changed"] * 3
    assert _user(sql, dc.guid(users_b[0]))[5] is False
    assert _user(sql, dc.guid(new))[0] == "fb.new"
    assert sql("SELECT deleted, deleted_at FROM ad_users WHERE object_guid = %s", (gone_guid,)) == [(True, t1)]
    assert sql("SELECT count(*) FROM ad_users WHERE synced_at = %s", (t1,)) == [(5,)]
    runs = sql("SELECT interval_end, mode, usn_from < usn_to, counts ->> 'users_read' FROM ad_sync_runs"
               " WHERE directory_id = %s AND step = 'sync_ad_users' ORDER BY interval_end", (directory,))
    assert runs == [(T0, "incremental", False, "0"), (t1, "incremental", True, "5")]   # the rerun replaced T0's row

    # an organisation renamed: its users' DNs change without a write to them; they are read again
    dc.ldap().modify_dn(org_b, "OU=Fabrikam Inc")
    t2 = t1 + timedelta(hours=1)
    third = ad.run("sync_ad_users", t2)
    b_users = 6 - 1 + 1 + 1                                          # users_b, minus deleted, plus new, disabled
    assert third["users_read"] == b_users and third["users_written"] == b_users
    renamed_org = org_b.replace("OU=Fabrikam", "OU=Fabrikam Inc")
    assert sql("SELECT name, dn FROM ad_organisations WHERE id = %s", (orgs["Fabrikam"],)) == [
        ("Fabrikam Inc", renamed_org)]
    assert _user(sql, dc.guid(f"CN=fb.new,{renamed_org}"))[2] == f"CN=fb.new,{renamed_org}"

    # a user moved out of the managed subtree: no incremental search sees it; the daily full pass does
    dc.ldap().modify_dn(users_a[11], "CN=ca11", new_superior="CN=Users,DC=test,DC=local")
    moved_guid = dc.guid("CN=ca11,CN=Users,DC=test,DC=local")
    t3 = t2 + timedelta(hours=1)
    assert ad.run("sync_ad_users", t3)["users_deleted"] == 0
    assert _user(sql, moved_guid)[6] is False
    t4 = T0 + timedelta(hours=25)
    daily = ad.run("sync_ad_users", t4)
    assert daily["directories"]["corp"]["mode"] == "full" and daily["users_deleted"] == 1
    assert daily["users_written"] == 0 + 0                            # nothing else changed
    assert sql("SELECT deleted, deleted_at FROM ad_users WHERE object_guid = %s", (moved_guid,)) == [(True, t4)]
    dc.delete(f"CN=ca11,CN=Users,DC=test,DC=local")


def test_unreachable_directory_is_reported_while_another_still_syncs(ad, sql):
    dc = ad.dc
    org = dc.add_ou("Live", ad.base)
    dc.add_user(org, "live.user")
    down = ad.directory("down", port=1)
    live = ad.directory("live")
    summary = ad.run("sync_ad_users", T0)
    assert summary["directories_synced"] == 1 and summary["directories_failed"] == 1
    assert summary["skipped"] == {"directory unavailable": 1}
    assert summary["users_written"] == 1 and "error" in summary["directories"]["down"]
    assert sql("SELECT last_error IS NOT NULL, last_error_at FROM ad_directories WHERE id = %s", (down,)) == [(True, T0)]
    assert sql("SELECT last_error, last_synced_at FROM ad_directories WHERE id = %s", (live,)) == [(None, T0)]
    assert sql("SELECT error IS NOT NULL FROM ad_sync_runs WHERE directory_id = %s", (down,)) == [(True,)]
    # every directory failing fails the step
    sql("UPDATE ad_directories SET enabled = false WHERE id = %s", (live,))
    ad.directory("badpw", password="wrong-password")
    with pytest.raises(RuntimeError, match="none of the 2 directories"):
        ad.run("sync_ad_users", T0 + timedelta(hours=1))
    # no directory configured: nothing to do, no failure
    sql("UPDATE ad_directories SET enabled = false")
    assert ad.run("sync_ad_users", T0)["directories_synced"] == 0


# -- SyncLockedUsersWork ---------------------------------------------------------------------------

def test_lockout_from_real_failed_binds_shows_as_locked_and_unlock_clears_it(ad, sql):
    from panelflow.hooks.active_directory import ActiveDirectoryHook

    dc = ad.dc
    org = dc.add_ou("Locks", ad.base)
    victim = dc.add_user(org, "lock.victim")
    brief = dc.add_user(org, "lock.brief")
    bystander = dc.add_user(org, "lock.bystander")
    directory = ad.directory("corp")
    try:
        dc.password_policy(lockout_threshold=3, lockout_minutes=5, reset_lockout_minutes=5)
        first = ad.run("sync_locked_users", T0)
        assert first["directories"]["corp"]["mode"] == "full" and first["users_written"] == 3
        assert first["locked_users"] == 0
        for _ in range(3):
            assert dc.bind_fails("lock.victim@test.local", "not-the-password")
        assert dc.get_int(victim, "msDS-User-Account-Control-Computed") == 0x10
        locked_at = _filetime(dc, victim, "lockoutTime")
        summary = ad.run("sync_locked_users", T0 + timedelta(minutes=15))
        assert summary["newly_locked"] == 1 and summary["locked_users"] == 1 and summary["unlocked"] == 0
        assert _user(sql, dc.guid(victim))[8:10] == (True, locked_at)
        assert _user(sql, dc.guid(bystander))[8:10] == (False, None)
        # an operator unlocks it (lockoutTime = 0)
        hook = ActiveDirectoryHook("ad_corp")
        hook.unlock(victim)
        hook.close()
        summary = ad.run("sync_locked_users", T0 + timedelta(minutes=30))
        assert summary["unlocked"] == 1 and summary["locked_users"] == 0
        assert _user(sql, dc.guid(victim))[8:10] == (False, None)
        # a lockout that ends by itself: the computed flag clears, uSNChanged does not move, so only
        # the live lock read sees it
        dc.password_policy(lockout_minutes=0.05, reset_lockout_minutes=0.05)      # 3 s
        for _ in range(3):
            dc.bind_fails("lock.brief@test.local", "not-the-password")
        assert ad.run("sync_locked_users", T0 + timedelta(minutes=45))["newly_locked"] == 1
        usn = dc.get_int(brief, "uSNChanged")
        deadline = time.monotonic() + 15
        while dc.get_int(brief, "msDS-User-Account-Control-Computed") and time.monotonic() < deadline:
            time.sleep(0.5)
        assert dc.get_int(brief, "msDS-User-Account-Control-Computed") == 0 and dc.get_int(brief, "uSNChanged") == usn
        summary = ad.run("sync_locked_users", T0 + timedelta(minutes=60))
        assert summary["users_read"] == 0 and summary["unlocked"] == 1 and summary["lock_states_written"] == 1
        assert _user(sql, dc.guid(brief))[8:10] == (False, None)
        assert sql("SELECT count(*) FROM ad_sync_runs WHERE directory_id = %s AND step = 'sync_locked_users'",
                   (directory,)) == [(5,)]
    finally:
        dc.reset_password_policy()


# -- UserPasswordExpiryNotificationWork ------------------------------------------------------------

def _outbox(sql):
    return sql("SELECT to_address, subject, body_text, dedupe_key, template FROM email_outbox ORDER BY id")


def test_password_expiry_notice_once_per_expiry(ad, sql):
    from panelflow.hooks.active_directory import ActiveDirectoryHook

    dc = ad.dc
    org = dc.add_ou("Expiry Org", ad.base)
    alice = dc.add_user(org, "alice", mail="alice@contoso.example", displayName="Alice Example")
    dc.add_user(org, "nomail")
    dc.add_user(org, "badmail", mail="not an address")
    dc.add_user(org, "forever", mail="forever@contoso.example", userAccountControl="66048")   # + DONT_EXPIRE
    dc.add_user(org, "off", mail="off@contoso.example", enabled=False)
    directory = ad.directory("corp")
    try:
        dc.password_policy(max_password_age_days=20)
        set_at = _filetime(dc, alice, "pwdLastSet")
        expires = _filetime(dc, alice, "msDS-UserPasswordExpiryTimeComputed")
        assert expires == set_at + timedelta(days=20)
        ad.run("sync_ad_users", set_at)

        # 25 days before expiry: outside the 14-day window
        early = ad.run("send_password_expiry_notices", set_at - timedelta(days=5))
        assert early["notices_queued"] == 0 and early["expiring"] == 0
        end = set_at + timedelta(days=10)                           # expires in 10 days
        summary = ad.run("send_password_expiry_notices", end)
        assert summary["notices_queued"] == 1 and summary["expiring"] == 3
        assert summary["skipped"] == {"no mail address": 1, "mail is not an address": 1}
        (to, subject, body, key, template), = _outbox(sql)
        assert (to, template) == ("alice@contoso.example", "ad_password_expiry")
        assert subject == "Your password for alice@test.local expires in 10 days"
        assert "Hello Alice Example," in body and expires.strftime("%Y-%m-%d %H:%M UTC") in body
        assert "(Expiry Org)" in body and "-- \ncorp" in body
        assert sql("SELECT object_guid::text, password_expires_at, mail, dedupe_key, queued_at"
                   " FROM ad_password_expiry_notices WHERE directory_id = %s", (directory,)) == [
            (dc.guid(alice), expires, "alice@contoso.example", key, end)]
        assert _user(sql, dc.guid(alice))[11] == expires           # the DB follows the new policy

        # a rerun, and the next day's run: nothing new for the same expiry
        assert ad.run("send_password_expiry_notices", end)["notices_queued"] == 0
        next_day = ad.run("send_password_expiry_notices", end + timedelta(days=1))
        assert next_day["notices_queued"] == 0 and next_day["already_notified"] == 1
        # a smaller window leaves it out
        assert ad.run("send_password_expiry_notices", end, password_expiry_notice_days=5)["expiring"] == 0

        # a new password: a new expiry, and a notice for it when it comes near
        time.sleep(1.1)
        hook = ActiveDirectoryHook("ad_corp")
        hook.set_password(alice, "An0ther!Passw0rd")
        hook.close()
        new_expiry = _filetime(dc, alice, "msDS-UserPasswordExpiryTimeComputed")
        assert new_expiry > expires
        # (the DC's clock cannot be moved: the new password is seconds younger, so its expiry is
        # already inside the window two days later — and it is a different expiry, so it is notified)
        later = ad.run("send_password_expiry_notices", end + timedelta(days=2))
        assert later["notices_queued"] == 1 and later["already_notified"] == 0
        assert [r[1] for r in _outbox(sql)][1] == "Your password for alice@test.local expires in 8 days"
        assert ad.run("send_password_expiry_notices", end + timedelta(days=3))["notices_queued"] == 0
        assert sql("SELECT password_expires_at FROM ad_password_expiry_notices ORDER BY id") == [
            (expires,), (new_expiry,)]
    finally:
        dc.reset_password_policy()


# -- SyncStaffUsersWork, RDSSyncWork ---------------------------------------------------------------

def test_staff_linked_by_guid_or_account_name_take_their_data_from_ad(ad, sql):
    dc = ad.dc
    org = dc.add_ou("Staff Org", ad.base)
    ann = dc.add_user(org, "ann.staff", givenName="Ann", sn="Staff", displayName="Ann Staff", mail="ann@host.example",
                      telephoneNumber="+44 1632 960001", title="Engineer", department="Support",
                      company="Hosting Ltd", physicalDeliveryOfficeName="London", employeeID="E-100")
    bob = dc.add_user(org, "bob.staff", givenName="Bob", sn="Staff", mobile="+44 7700 900002", enabled=False)
    directory = ad.directory("corp")
    ad.run("sync_ad_users", T0)
    sql("INSERT INTO ad_staff (employee_id, directory_id, ad_sam_account_name) VALUES (1, %s, 'ANN.staff')",
        (directory,))
    sql("INSERT INTO ad_staff (employee_id, directory_id, ad_object_guid) VALUES (2, %s, %s)",
        (directory, dc.guid(bob)))
    sql("INSERT INTO ad_staff (employee_id, directory_id, ad_sam_account_name) VALUES (3, %s, 'left.company')",
        (directory,))
    summary = ad.run("sync_staff_users", T0)
    assert summary["staff_written"] == 2 and summary["staff_unmatched"] == 1 and summary["staff_linked"] == 2
    assert summary["skipped"] == {"no AD user for the employee's link": 1}
    user_ids = dict(sql("SELECT sam_account_name, id FROM ad_users"))
    assert sql("SELECT employee_id, ad_object_guid::text, ad_sam_account_name, ad_user_id, display_name, first_name,"
               " last_name, mail, phone, mobile, title, department, company, office, employee_number,"
               " account_enabled, link_status, synced_at FROM ad_staff ORDER BY employee_id") == [
        (1, dc.guid(ann), "ann.staff", user_ids["ann.staff"], "Ann Staff", "Ann", "Staff", "ann@host.example",
         "+44 1632 960001", None, "Engineer", "Support", "Hosting Ltd", "London", "E-100", True, "linked", T0),
        (2, dc.guid(bob), "bob.staff", user_ids["bob.staff"], None, "Bob", "Staff", None, None, "+44 7700 900002",
         None, None, None, None, None, False, "linked", T0),
        (3, None, "left.company", None, None, None, None, None, None, None, None, None, None, None, None, None,
         "unmatched", T0)]
    assert ad.run("sync_staff_users", T0)["staff_written"] == 0
    dc.modify(ann, title="Lead Engineer")
    assert ad.run("sync_staff_users", T0 + timedelta(hours=1))["staff_written"] == 1
    assert sql("SELECT title FROM ad_staff WHERE employee_id = 1") == [("Lead Engineer",)]


def test_rds_users_are_members_of_their_organisations_rds_group(ad, sql):
    dc = ad.dc
    org_a, org_b = dc.add_ou("RDS A", ad.base), dc.add_ou("RDS B", ad.base)
    a1, a2, a3 = (dc.add_user(org_a, f"rds.a{i}") for i in (1, 2, 3))
    b1, b2 = (dc.add_user(org_b, f"rds.b{i}", enabled=(i == 1)) for i in (1, 2))
    nested = dc.add_group(org_a, "A RDS nested", members=[a2])
    group_a = dc.add_group(org_a, "A RDS", members=[a1, nested, b2])      # b2 is not org A's user
    group_dir = dc.add_group(ad.base, "Directory RDS", members=[b2, a3])   # the default: org B's users only
    directory = ad.directory("corp", rds_group_dn=group_dir)
    ad.run("sync_ad_users", T0)
    sql("UPDATE ad_organisations SET rds_group_dn = %s WHERE name = 'RDS A'", (group_a,))
    summary = ad.run("sync_rds_users", T0)
    assert summary["rds_written"] == 3 and summary["rds_users"] == 3 and summary["rds_removed"] == 0
    rows = sql("SELECT u.sam_account_name, r.rds_group_dn, r.account_enabled, r.since, r.removed_at FROM ad_rds_users r"
               " JOIN ad_users u ON u.id = r.user_id ORDER BY 1")
    assert rows == [("rds.a1", group_a, True, T0, None), ("rds.a2", group_a, True, T0, None),
                    ("rds.b2", group_dir, False, T0, None)]
    assert sql("SELECT sam_account_name FROM ad_users WHERE rds_enabled ORDER BY 1") == [
        ("rds.a1",), ("rds.a2",), ("rds.b2",)]
    assert ad.run("sync_rds_users", T0)["rds_written"] == 0
    # losing the membership (through the nested group) removes the service
    dc.remove_members(nested, a2)
    t1 = T0 + timedelta(hours=1)
    summary = ad.run("sync_rds_users", t1)
    assert summary["rds_removed"] == 1 and summary["rds_users"] == 2
    assert sql("SELECT removed_at FROM ad_rds_users r JOIN ad_users u ON u.id = r.user_id"
               " WHERE u.sam_account_name = 'rds.a2'") == [(t1,)]
    assert sql("SELECT rds_enabled FROM ad_users WHERE sam_account_name = 'rds.a2'") == [(False,)]
    # a missing RDS group is reported; its organisation's rows are left as they are
    sql("UPDATE ad_organisations SET rds_group_dn = %s WHERE name = 'RDS A'", (f"CN=Gone,{org_a}",))
    summary = ad.run("sync_rds_users", t1 + timedelta(hours=1))
    assert summary["skipped"] == {"RDS group does not exist": 1} and summary["rds_removed"] == 0
    assert directory


# -- GroupActionWorkAD: extended data, services -----------------------------------------------------

def test_extended_data_organisation_counts_and_user_services(ad, sql):
    dc = ad.dc
    org = dc.add_ou("Ext Org", ad.base)
    boss = dc.add_user(org, "ext.boss", title="Director")
    worker = dc.add_user(org, "ext.worker", telephoneNumber="+44 1632 960100", title="Engineer",
                         department="Ops", company="Ext Ltd", physicalDeliveryOfficeName="Leeds", manager=boss,
                         mail="worker@ext.example", proxyAddresses=["SMTP:worker@ext.example", "smtp:w@ext.example"],
                         msNPAllowDialin="TRUE")
    dc.add_user(org, "ext.off", enabled=False)
    rds = dc.add_group(org, "Ext RDS", members=[worker])
    assert not dc.bind_fails("ext.worker@test.local", DEFAULT_USER_PASSWORD)    # a logon: lastLogonTimestamp
    last_logon = _filetime(dc, worker, "lastLogonTimestamp")
    assert last_logon is not None
    ad.directory("corp", rds_group_dn=rds)
    ad.run("sync_ad_users", T0)
    ad.run("sync_rds_users", T0)

    summary = ad.run("update_ad_extended_data", T0)
    assert summary["directories"]["corp"]["mode"] == "full" and summary["users_read"] == 3
    assert summary["users_written"] == 3
    assert sql("SELECT extended FROM ad_users WHERE sam_account_name = 'ext.worker'") == [({
        "telephoneNumber": "+44 1632 960100", "title": "Engineer", "department": "Ops", "company": "Ext Ltd",
        "physicalDeliveryOfficeName": "Leeds", "manager": boss, "lastLogonTimestamp": last_logon.isoformat(),
        "accountExpires": None, "logonCount": 0},)]

    services = ad.run("sync_ad_user_services", T0)
    assert services["services_written"] == 3
    got = sql("SELECT u.sam_account_name, s.service, s.detail FROM ad_user_services s JOIN ad_users u ON u.id = s.user_id"
              " ORDER BY 1, 2")
    assert got == [("ext.worker", "mail_user", {"address": "worker@ext.example", "target": None}),
                   ("ext.worker", "rds", {"group": rds}), ("ext.worker", "vpn", {})]

    # organisation counts (after the services, so the mailbox count is current)
    ad.run("update_ad_extended_data", T0 + timedelta(minutes=5))
    (extended,), = sql("SELECT extended FROM ad_organisations WHERE name = 'Ext Org'")
    assert extended == {"users": 3, "enabled_users": 2, "disabled_users": 1, "locked_users": 0, "mail_users": 1,
                        "mailboxes": 0, "rds_users": 1, "password_never_expires": 0, "groups": 1,
                        "last_logon": extended["last_logon"]}
    assert datetime.fromisoformat(extended["last_logon"]) == last_logon

    # incremental: only the changed user is read; its dial-in taken away removes the vpn service
    dc.modify(worker, msNPAllowDialin="FALSE", title="Senior Engineer")
    t1 = T0 + timedelta(minutes=10)
    ext = ad.run("update_ad_extended_data", t1)
    assert ext["directories"]["corp"]["mode"] == "incremental" and ext["users_read"] == 1 and ext["users_written"] == 1
    svc = ad.run("sync_ad_user_services", t1)
    assert svc["users_read"] == 1 and svc["services_removed"] == 1
    assert sql("SELECT service FROM ad_user_services ORDER BY 1") == [("mail_user",), ("rds",)]
    # a user the step has never read (created after its watermark) is caught up
    dc.add_user(org, "ext.late", mail="late@ext.example")
    ad.run("sync_ad_users", t1)
    t2 = t1 + timedelta(minutes=5)
    sql("UPDATE ad_sync_state SET usn_watermark = %s WHERE step = 'sync_ad_user_services'",
        (dc.get_int(f"CN=ext.late,{org}", "uSNChanged"),))
    svc = ad.run("sync_ad_user_services", t2)
    assert svc["users_caught_up"] == 1 and svc["services_written"] == 1


def test_mailbox_derivation_from_exchange_attributes():
    """Samba has no Exchange schema; the derivation is checked on entries shaped like AD's answer."""
    from panelflow.hooks.active_directory import ADEntry
    from panelflow.steps.active_directory.user_details import services_of

    mailbox = ADEntry("CN=m,OU=o,DC=x", {
        "homeMDB": [b"CN=DB01,CN=Databases,CN=Exchange Administrative Group,CN=Configuration,DC=x"],
        "msExchRecipientTypeDetails": [b"4"], "proxyAddresses": [b"smtp:alias@x.example", b"SMTP:shared@x.example"],
        "mail": [b"shared@x.example"], "msRTCSIP-UserEnabled": [b"TRUE"], "msRTCSIP-PrimaryUserAddress": [b"sip:s@x"]})
    assert services_of(mailbox) == {
        "mailbox": {"type": "SharedMailbox", "address": "shared@x.example",
                    "database": "CN=DB01,CN=Databases,CN=Exchange Administrative Group,CN=Configuration,DC=x",
                    "aliases": ["alias@x.example"]},
        "lync": {"sip": "sip:s@x"}}
    remote = ADEntry("CN=r,DC=x", {"msExchRecipientTypeDetails": [b"2147483648"], "mail": [b"r@x.example"],
                                   "targetAddress": [b"SMTP:r@tenant.mail.onmicrosoft.com"]})
    assert services_of(remote)["mailbox"]["type"] == "RemoteUserMailbox"
    assert services_of(ADEntry("CN=n,DC=x", {"msNPAllowDialin": [b"FALSE"]})) == {}
    with pytest.raises(ValueError, match="msNPAllowDialin"):
        services_of(ADEntry("CN=n,DC=x", {"msNPAllowDialin": [b"maybe"]}))
