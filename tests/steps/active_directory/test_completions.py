"""Directory completions against a real Samba 4 DC (tests/harness/samba_dc.py) and the real panel DB:
AD contacts (SyncFromBackendWork 3), the users' backup (SyncMissingDataWork 1), orphan users
(ProvisioningWork 40), empty mail/employeeID filled (46), organisation UPN suffixes (14) and the
orphan organisation records (UsageReportWork 7).

Each test works in its own OU (``samba_ou``), the directory's ``base_dn``; the OUs under it are the
organisations. AD's clock is real, so intervals are laid after the objects' real ``whenCreated``.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import pytest

from panelflow.step import Interval
from harness.samba_dc import samba_dc, samba_ou  # noqa: F401 - fixtures

T0 = datetime.now(timezone.utc).replace(microsecond=0)
HOSTILE = "O'Brien, Ann (*) \\ <1>; x=y"
OWN_TABLES = "ad_directories, customers, providers, currencies, exchange_servers"   # TRUNCATE … CASCADE empties the rest


def at(end):
    return Interval(end - timedelta(hours=1), end)


@pytest.fixture
def ad(panel_db, sql, samba_dc, samba_ou, monkeypatch):
    """One directory over the test's OU (connection ``ad_corp``) and one customer."""
    sql(f"TRUNCATE {OWN_TABLES} RESTART IDENTITY CASCADE")
    monkeypatch.setenv("AIRFLOW_CONN_AD_CORP", samba_dc.connection())
    sql("INSERT INTO ad_directories (name, conn_id, base_dn) VALUES ('corp', 'ad_corp', %s)", (samba_ou,))
    sql("INSERT INTO currencies (code, name, minor_units) VALUES ('GBP', 'Pound sterling', 2)")
    sql("INSERT INTO providers (name, billing_email, currency) VALUES ('Provider', 'billing@provider.test', 'GBP')")
    sql("INSERT INTO customers (provider_id, name, email, country, currency)"
        " VALUES ((SELECT min(id) FROM providers), 'Contoso', 'it@contoso.test', 'GB', 'GBP')")

    class Ctx:
        dc, base, db = samba_dc, samba_ou, panel_db
        customer = sql("SELECT id FROM customers")[0][0]

        @staticmethod
        def sync(end=T0):
            from panelflow.steps.active_directory.sync import sync_ad_users

            return sync_ad_users(panel_db, at(end), {}, None)

        @staticmethod
        def link(org_name, customer=True):
            sql("UPDATE ad_organisations SET customer_id = %s WHERE name = %s",
                (Ctx.customer if customer else None, org_name))

    yield Ctx
    sql(f"TRUNCATE {OWN_TABLES} RESTART IDENTITY CASCADE")


# -- SyncFromBackendWork 3 ---------------------------------------------------------------------------------

def test_contacts_sync_full_then_incremental_with_changes_and_deletions(ad, sql):
    from panelflow.steps.active_directory.contacts import sync_ad_contacts

    dc = ad.dc
    org = dc.add_ou("Contoso", ad.base)
    dc.add_user(org, "not.a.contact")
    hostile = f"CN={_rdn(HOSTILE)},{org}"
    dc.ldap().add(hostile, ["top", "person", "organizationalPerson", "contact"],
                  {"displayName": HOSTILE, "mail": "ann@partner.test", "company": "Partner (UK)"})
    hostile = _as_dc(dc, hostile)
    other = f"CN=Bob Partner,{org}"
    dc.ldap().add(other, ["top", "person", "organizationalPerson", "contact"], {"mail": "bob@partner.test"})
    loose = f"CN=Loose Contact,{ad.base}"
    dc.ldap().add(loose, ["top", "person", "organizationalPerson", "contact"], {"mail": "loose@partner.test"})
    ad.sync()

    first = sync_ad_contacts(ad.db, at(T0), {}, None)
    assert first["directories_synced"] == 1 and first["directories"]["corp"]["mode"] == "full"
    assert first["contacts_read"] == 3 and first["contacts_written"] == 3
    rows = dict(((dn, (mail, company, org_id is not None)) for dn, mail, company, org_id in sql(
        "SELECT dn, mail, company, organisation_id FROM ad_contacts WHERE NOT deleted")))
    assert rows == {hostile: ("ann@partner.test", "Partner (UK)", True),
                    other: ("bob@partner.test", None, True), loose: ("loose@partner.test", None, False)}
    assert sql("SELECT display_name FROM ad_contacts WHERE dn = %s", (hostile,)) == [(HOSTILE,)]

    again = sync_ad_contacts(ad.db, at(T0 + timedelta(minutes=10)), {}, None)
    assert again["directories"]["corp"]["mode"] == "incremental" and again["contacts_written"] == 0

    dc.modify(other, mail="bob@new-partner.test")
    dc.delete(loose)
    later = sync_ad_contacts(ad.db, at(T0 + timedelta(minutes=20)), {}, None)
    assert later["contacts_read"] == 1 and later["contacts_written"] == 1 and later["contacts_deleted"] == 1
    assert sql("SELECT mail FROM ad_contacts WHERE dn = %s", (other,)) == [("bob@new-partner.test",)]
    assert sql("SELECT deleted, deleted_at FROM ad_contacts WHERE dn = %s", (loose,)) == [
        (True, T0 + timedelta(minutes=20))]
    assert sql("SELECT count(*) FROM ad_contacts") == [(3,)]     # reruns added no row


def test_a_directory_that_cannot_be_reached_is_named_and_the_others_worked_all_down_fails(ad, sql, monkeypatch):
    from panelflow.steps.active_directory._backend import DirectoriesFailed
    from panelflow.steps.active_directory.contacts import sync_ad_contacts
    from panelflow.steps.active_directory.orphans import remove_orphan_ad_users

    org = ad.dc.add_ou("Contoso", ad.base)
    ad.dc.ldap().add(f"CN=Pat,{org}", ["top", "person", "organizationalPerson", "contact"], {"mail": "pat@p.test"})
    monkeypatch.setenv("AIRFLOW_CONN_AD_DOWN", ad.dc.connection(password="wrong-password"))
    sql("INSERT INTO ad_directories (name, conn_id, base_dn) VALUES ('down', 'ad_down', %s)", (ad.base,))

    out = sync_ad_contacts(ad.db, at(T0), {}, None)
    assert (out["directories_synced"], out["directories_failed"], out["contacts_written"]) == (1, 1, 1)
    assert out["skipped"] == {"directory unavailable": 1} and "invalidCredentials" in out["directories"]["down"]["error"]
    assert sql("SELECT last_error IS NOT NULL FROM ad_directories WHERE name = 'down'") == [(True,)]

    sql("UPDATE ad_directories SET enabled = false WHERE name = 'corp'")
    with pytest.raises(DirectoriesFailed):
        remove_orphan_ad_users(ad.db, at(T0), {"disable_orphan_ad_users": True}, None)


# -- SyncMissingDataWork 1 ---------------------------------------------------------------------------------

def test_user_backup_writes_only_missing_or_changed_and_keeps_removed_users(ad, sql):
    from panelflow.steps.active_directory.missing_data import sync_missing_ad_user_data

    dc = ad.dc
    org = dc.add_ou("Contoso", ad.base)
    ann = _as_dc(dc, dc.add_user(org, "ann", cn=HOSTILE, givenName="Ann", title="CFO", mail="ann@contoso.test",
                                 proxyAddresses=["SMTP:ann@contoso.test", "smtp:a@contoso.test"]))
    bob = dc.add_user(org, "bob", givenName="Bob")
    group = dc.add_group(org, "Finance", [ann])
    ad.sync()

    first = sync_missing_ad_user_data(ad.db, at(T0), {}, None)
    assert first["users_read"] == 2 and first["users_written"] == 2 and first["users_added"] == 2
    (data,) = sql("SELECT data FROM ad_user_backups WHERE dn = %s", (ann,))[0]
    assert data["givenName"] == "Ann" and data["title"] == "CFO" and data["memberOf"] == [group]
    assert data["proxyAddresses"] == ["SMTP:ann@contoso.test", "smtp:a@contoso.test"]
    assert sql("SELECT count(*) FROM ad_user_backups WHERE organisation_id IS NOT NULL") == [(2,)]

    again = sync_missing_ad_user_data(ad.db, at(T0 + timedelta(days=1)), {}, None)
    assert again["users_written"] == 0 and again["users_pending"] == 0

    dc.modify(bob, title="Clerk")
    dc.delete(ann)
    carol = dc.add_user(org, "carol")
    dave = dc.add_user(org, "dave")
    bounded = sync_missing_ad_user_data(ad.db, at(T0 + timedelta(days=2)), {"backup_users_per_run": 2}, None)
    assert bounded["users_written"] == 2 and bounded["users_pending"] == 1 and bounded["users_removed"] == 1
    removed = sql("SELECT removed_at, data ->> 'title' FROM ad_user_backups WHERE dn = %s", (ann,))
    assert removed == [(T0 + timedelta(days=2), "CFO")]          # kept for a restore
    rest = sync_missing_ad_user_data(ad.db, at(T0 + timedelta(days=3)), {"backup_users_per_run": 2}, None)
    assert rest["users_written"] == 1 and rest["users_pending"] == 0
    assert sql("SELECT data ->> 'title' FROM ad_user_backups WHERE dn = %s", (bob,)) == [("Clerk",)]
    assert {dn for (dn,) in sql("SELECT dn FROM ad_user_backups")} == {ann, bob, carol, dave}


# -- ProvisioningWork 40 ------------------------------------------------------------------------------------

def test_orphan_users_reported_disabled_only_when_allowed_and_never_deleted_in_the_first_run(ad, sql):
    from panelflow.steps.active_directory.orphans import remove_orphan_ad_users

    dc = ad.dc
    owned = dc.add_ou("Owned", ad.base)
    unowned = dc.add_ou("Unowned", ad.base)
    keep = dc.add_user(owned, "keep.me")
    lost = _as_dc(dc, dc.add_user(unowned, "lost.user", cn=HOSTILE))
    loose = dc.add_user(ad.base, "loose.user")
    ad.sync()
    ad.link("Owned")
    day1 = T0 + timedelta(days=2)        # the accounts are older than the grace period by then
    grace = {"orphan_grace_days": 1}

    reported = remove_orphan_ad_users(ad.db, at(day1), grace, None)
    assert reported["orphans"] == 2 and reported["new_orphans"] == 2 and reported["disabled"] == 0
    assert sorted(reported["orphans_named"]) == sorted([f"corp: {lost}: organisation has no customer",
                                                        f"corp: {loose}: outside any organisation OU"])
    assert dc.get_int(lost, "userAccountControl") == 0x200                 # nothing done without the setting
    too_new = remove_orphan_ad_users(ad.db, at(day1), {"orphan_grace_days": 30}, None)
    assert too_new["orphans"] == 0 and too_new["too_new"] == 2 and too_new["cleared"] == 0

    allowed = {**grace, "disable_orphan_ad_users": True, "delete_orphan_ad_users_after_days": 1}
    acted = remove_orphan_ad_users(ad.db, at(day1), allowed, None)
    assert acted["disabled"] == 2 and acted["deleted"] == 0 and acted["new_orphans"] == 0
    assert dc.get_int(lost, "userAccountControl") == 0x202 and dc.get_int(keep, "userAccountControl") == 0x200
    rerun = remove_orphan_ad_users(ad.db, at(day1), allowed, None)
    assert rerun["disabled"] == 0 and rerun["already_disabled"] == 2 and rerun["deleted"] == 0

    # a day later: the operator re-enabled one (kept), the other is deleted; linking an OU clears its users
    dc.modify(loose, userAccountControl="512")
    day2 = day1 + timedelta(days=1)
    later = remove_orphan_ad_users(ad.db, at(day2), allowed, None)
    assert later["deleted"] == 1 and later["disabled"] == 0 and later["re_enabled_kept"] == 1
    assert dc.get_int(loose, "userAccountControl") == 0x200
    conn = dc.ldap()
    conn.search(ad.base, "(sAMAccountName=lost.user)", attributes=["cn"])
    assert [r for r in conn.response if r["type"] == "searchResEntry"] == []
    assert later["skipped"] == {"orphan re-enabled or moved since it was disabled: not deleted": 1}
    ad.link("Unowned")
    cleared = remove_orphan_ad_users(ad.db, at(day2 + timedelta(hours=1)), grace, None)
    assert cleared["orphans"] == 1 and cleared["cleared"] == 0
    rows = sql("SELECT sam_account_name, reason, first_seen_at, disabled_at, deleted_at FROM ad_orphan_users"
               " ORDER BY sam_account_name")
    assert rows == [("loose.user", "outside any organisation OU", day1, day1, None),
                    ("lost.user", "organisation has no customer", day1, day1, day2)]


# -- ProvisioningWork 46 ------------------------------------------------------------------------------------

def test_empty_mail_and_employee_id_filled_from_what_is_known_only(ad, sql):
    from panelflow.steps.active_directory.user_fill import fill_empty_ad_user_email_and_employee_id as fill

    dc = ad.dc
    org = dc.add_ou("Contoso", ad.base)
    own = dc.add_user(org, "own.proxy", cn=HOSTILE, proxyAddresses=["smtp:alias@contoso.test", "SMTP:own@contoso.test"])
    staff = dc.add_user(org, "staff.user", mail="set@contoso.test")
    kept = dc.add_user(org, "kept", mail="Kept@Contoso.test", employeeID="E-1")
    unknown = dc.add_user(org, "unknown")
    boxed = dc.add_user(org, "boxed")
    ad.sync()
    sql("INSERT INTO ad_staff (employee_id, directory_id, ad_object_guid) VALUES (4711, 1, %s)", (dc.guid(staff),))
    sql("INSERT INTO exchange_servers (name, fqdn, conn_id) VALUES ('EX01', 'ex01.test', 'exch_ex01')")
    sql("INSERT INTO exchange_organizations (exchange_server_id, name, organizational_unit) VALUES (1, 'C', %s)", (org,))
    sql("INSERT INTO exchange_mailboxes (organization_id, exchange_server_id, primary_smtp_address, alias, display_name,"
        " user_principal_name, status) VALUES (1, 1, 'Boxed@Contoso.test', 'boxed', 'Boxed', 'BOXED@test.local',"
        " 'active')")

    first = fill(ad.db, at(T0), {}, None)
    assert first["mail_filled"] == 2 and first["employee_id_filled"] == 1 and first["no_value"] == 1
    assert dc.get(own, "mail")["mail"] == [b"own@contoso.test"]
    assert dc.get(boxed, "mail")["mail"] == [b"Boxed@Contoso.test"]
    assert dc.get(staff, "employeeID", "mail") == {"employeeID": [b"4711"], "mail": [b"set@contoso.test"]}
    assert dc.get(kept, "mail", "employeeID") == {"mail": [b"Kept@Contoso.test"], "employeeID": [b"E-1"]}
    assert dc.get(unknown, "mail")["mail"] == []
    assert sorted(sql("SELECT attribute, value, source FROM ad_user_fills")) == [
        ("employeeID", "4711", "ad_staff"), ("mail", "Boxed@Contoso.test", "exchange_mailboxes"),
        ("mail", "own@contoso.test", "proxyAddresses")]

    again = fill(ad.db, at(T0 + timedelta(hours=1)), {}, None)
    assert again["mail_filled"] == 0 and again["employee_id_filled"] == 0
    assert sql("SELECT count(*) FROM ad_user_fills") == [(3,)]


# -- ProvisioningWork 14 ------------------------------------------------------------------------------------

def test_org_suffixes_add_the_customers_verified_domains_and_keep_others(ad, sql):
    from panelflow.steps.active_directory.org_suffixes import update_ad_org_suffixes

    dc = ad.dc
    org = dc.add_ou("Contoso, Ltd", ad.base, uPNSuffixes=["legacy.test"])
    other = dc.add_ou("Fabrikam", ad.base)
    ad.sync()
    ad.link("Contoso, Ltd")
    for name, status in (("Contoso.test", "verified"), ("mail.contoso.test", "verified"), ("pending.test", "pending")):
        sql("INSERT INTO domains (customer_id, name, contact_email, verification_token, status)"
            " VALUES (%s, %s, 'it@contoso.test', 'tok', %s)", (ad.customer, name, status))

    first = update_ad_org_suffixes(ad.db, at(T0), {}, None)
    assert first["organisations"] == 1 and first["suffixes_added"] == 2 and first["extra_suffixes"] == 1
    assert sorted(dc.get(org, "uPNSuffixes")["uPNSuffixes"]) == [b"contoso.test", b"legacy.test",
                                                                   b"mail.contoso.test"]
    assert dc.get(other, "uPNSuffixes")["uPNSuffixes"] == []
    assert sql("SELECT upn_suffixes FROM ad_organisations WHERE name = 'Contoso, Ltd'") == [
        (["contoso.test", "legacy.test", "mail.contoso.test"],)]
    assert sql("SELECT suffix FROM ad_upn_suffixes WHERE source = 'organisation' ORDER BY suffix") == [
        ("contoso.test",), ("legacy.test",), ("mail.contoso.test",)]

    again = update_ad_org_suffixes(ad.db, at(T0 + timedelta(minutes=10)), {}, None)
    assert again["organisations_changed"] == 0 and again["suffixes_added"] == 0


# -- ProvisioningWork 11 and 12: GroupActionWorkAD 3 and 4's functions, as the catalog names them -----------

def test_provisioning_11_and_12_run_the_group_action_ad_functions_on_the_directory(ad, sql):
    import importlib

    from panelflow.catalog import load_catalog

    threads = {t.name: {s.number: s.run for s in t.steps} for t in load_catalog(check_steps=False).threads}
    assert threads["ProvisioningWork"]["11"] == threads["GroupActionWorkAD"]["3"]
    assert threads["ProvisioningWork"]["12"] == threads["GroupActionWorkAD"]["4"]

    def run(number, end):
        module, _, name = threads["ProvisioningWork"][number].rpartition(".")
        return getattr(importlib.import_module(module), name)(ad.db, at(end), {}, None)

    dc = ad.dc
    org = dc.add_ou("Contoso", ad.base)
    mail_user = dc.add_user(org, "mail.user", mail="mail.user@contoso.test")
    shared = dc.add_user(org, "sales-inbox", cn=HOSTILE)
    ad.sync()
    sql("INSERT INTO ad_user_mailbox_types (directory_id, object_guid, mailbox_type, updated_at)"
        " VALUES (1, %s, 'shared', %s)", (dc.guid(shared), T0))

    services = run("11", T0)
    assert services["directories_synced"] == 1 and services["services_written"] == 1
    assert sql("SELECT u.sam_account_name, s.service, s.detail ->> 'address' FROM ad_user_services s"
               " JOIN ad_users u ON u.id = s.user_id") == [("mail.user", "mail_user", "mail.user@contoso.test")]
    disabled = run("12", T0)
    assert disabled["disabled"] == 1 and dc.get_int(shared, "userAccountControl") == 0x202
    assert dc.get_int(mail_user, "userAccountControl") == 0x200
    assert run("11", T0 + timedelta(minutes=10))["services_written"] == 0      # reruns change nothing
    assert run("12", T0 + timedelta(minutes=10))["disabled"] == 0


# -- UsageReportWork 7 --------------------------------------------------------------------------------------

def test_orphan_organisation_records_removed_in_bounded_batches(ad, sql):
    from panelflow.steps.active_directory.orphans import remove_orphan_ad_organization_records as purge

    old, recent = T0 - timedelta(days=40), T0 - timedelta(days=5)

    def org(name, deleted_at):
        return sql("INSERT INTO ad_organisations (directory_id, object_guid, dn, name, deleted, deleted_at)"
                   " VALUES (1, %s, %s, %s, %s, %s) RETURNING id",
                   (uuid.uuid4(), f"OU={name},{ad.base}", name, deleted_at is not None, deleted_at))[0][0]

    gone, fresh, live = org("Gone", old), org("Fresh", recent), org("Live", None)

    def user(org_id, deleted_at):
        sql("INSERT INTO ad_users (directory_id, organisation_id, object_guid, dn, deleted, deleted_at)"
            " VALUES (1, %s, %s, 'CN=u', %s, %s)", (org_id, uuid.uuid4(), deleted_at is not None, deleted_at))

    for _ in range(3):
        user(gone, old)
    user(fresh, old)              # its organisation went only 5 days ago: kept
    user(live, old)               # deleted in AD, but its organisation is live: not an orphan
    user(None, old)               # belongs to no organisation
    sql("INSERT INTO ad_groups (directory_id, organisation_id, object_guid, dn, deleted, deleted_at)"
        " VALUES (1, %s, %s, 'CN=g', true, %s)", (gone, uuid.uuid4(), old))

    bounded = purge(ad.db, at(T0), {"ad_orphan_records_batch": 2, "ad_orphan_records_per_run": 3})
    assert bounded["users_deleted"] == 3 and bounded["budget_spent"] == 1
    rest = purge(ad.db, at(T0), {"ad_orphan_records_batch": 2})
    assert (rest["users_deleted"], rest["groups_deleted"], rest["organisations_deleted"]) == (1, 1, 1)
    assert sorted(n for (n,) in sql("SELECT name FROM ad_organisations")) == ["Fresh", "Live"]
    assert sql("SELECT count(*) FROM ad_users") == [(2,)]
    assert purge(ad.db, at(T0), {})["users_deleted"] == 0


def _as_dc(dc, dn):
    """``dn`` as the DC writes it (Samba hex-escapes ``;`` and ``=``): what the steps store."""
    conn = dc.ldap()
    conn.search(dn, "(objectClass=*)", search_scope="BASE", attributes=["objectGUID"])
    return conn.response[0]["dn"]


def _rdn(value):
    from ldap3.utils.dn import escape_rdn

    return escape_rdn(value)
