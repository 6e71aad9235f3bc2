"""DomainNameDataSyncThread and ProvisioningWork 36 against the loopback EPP server (include/sandbox/registrar.py).

The sandbox holds the domains of two clients: ours (``panelflow-test``) and another registrar's.
The panel knows its domains by name (``domains``); the account's zone (``example.test``) is what
the sync probes, EPP having no domain list.
"""

from __future__ import annotations

import json
import logging
import os

import pendulum
import psycopg
import pytest

from panelflow.hooks.registrar import RegistrarHook, RegistrarUnavailable
from panelflow.step import EndpointsFailed, Interval
from panelflow.steps.provisioning import update_registrar_status
from panelflow.steps.registrar import enforce_inet_nameservers, sync_domain_contacts_and_registrars
from sandbox import registrar as sandbox

NOW = pendulum.datetime(2026, 11, 20, 6, 0, tz="UTC")
LATER = NOW.add(hours=6)
LOG = logging.getLogger("test_registrar")
CLID, PASSWORD = "panelflow-test", "epp-test-pw1"
OTHER, INET = "other-registrar", "inet-reseller"
OWN_TABLES = ("registrar_accounts", "registrar_domains", "registrar_domain_contacts", "registrar_probes",
              "registrar_poll_messages", "registrar_nameserver_updates")
NAMES = [f"d{i:02d}.example.test" for i in range(1, 10)]
WANTED = ["ns1.nsa.example.net", "ns2.nsa.example.net"]


@pytest.fixture
def db(panel_db, migrated_panel_db):
    with psycopg.connect(migrated_panel_db, autocommit=True) as conn:
        conn.execute("TRUNCATE " + ", ".join(OWN_TABLES) + " RESTART IDENTITY CASCADE")
    return panel_db


@pytest.fixture
def registry(monkeypatch):
    """Our nine domains and a broken one, another client's domain, and iNET's .my domains."""
    domains = [sandbox.demo_domain(name, i, clid=CLID) for i, name in enumerate(NAMES, 1)]
    domains += [sandbox.demo_domain("broken.example.test", 10, clid=CLID),
                sandbox.demo_domain("theirs.example.test", 11, clid=OTHER),
                sandbox.demo_domain("a.com.my", 21, clid=INET), sandbox.demo_domain("b.com.my", 22, clid=INET),
                sandbox.demo_domain("locked.com.my", 23, clid=INET, statuses=("clientUpdateProhibited",)),
                sandbox.demo_domain("done.com.my", 24, clid=INET, nameservers=tuple(reversed(WANTED))),
                sandbox.demo_domain("extra.com.my", 25, clid=INET, nameservers=(*WANTED, "ns1.hostmatic.example"))]
    clients = {CLID: PASSWORD, OTHER: "other-pw-1", INET: "inet-pw-01"}
    with sandbox.RegistrarSandbox(port=0, clients=clients, domains=domains) as server:
        for conn_id, clid in (("registrar_sandbox", CLID), ("registrar_inet", INET)):
            monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({
                "conn_type": "panelflow_epp", "host": "127.0.0.1", "port": server.port, "login": clid,
                "password": clients[clid], "extra": {"ca_pem": server.ca_pem, "read_timeout": 5}}))
        yield server


def account(sql, name="Sandbox registrar", conn_id="registrar_sandbox", zones=("example.test",), **columns):
    cols = {"name": name, "conn_id": conn_id, "zones": list(zones), **columns}
    return sql(f"INSERT INTO registrar_accounts ({', '.join(cols)}) VALUES ({', '.join(['%s'] * len(cols))})"
               " RETURNING id", tuple(cols.values()))[0][0]


def panel_domains(sql, *names) -> dict[str, int]:
    return {name: sql("INSERT INTO domains (customer_id, name, contact_email, verification_token)"
                      " VALUES (1, %s, 'o@x.example', 't') RETURNING id", (name,))[0][0] for name in names}


def run(db, at=NOW):
    return sync_domain_contacts_and_registrars(db, Interval(at, at), LOG)


def snapshot(sql):
    return (sql("SELECT * FROM registrar_domains ORDER BY id"),
            sql("SELECT * FROM registrar_domain_contacts ORDER BY registrar_domain_id, role"))


def commands(registry, since=0, clid=CLID):
    return [(c["command"], c["object"]) for c in registry.commands[since:] if c["clid"] in (clid, None)]


@pytest.fixture
def synced(db, sql, registry):
    """The account, the panel's domains (ours, theirs, a free one, one outside the zone), one sync."""
    account(sql)
    ids = panel_domains(sql, *NAMES, "broken.example.test", "theirs.example.test", "free.example.test",
                        "shop.elsewhere.test")
    return ids, run(db)


def test_sync_probes_reads_details_and_contacts(synced, sql, registry, db):
    ids, summary = synced
    assert (summary["domains_probed"], summary["domains_added"], summary["domains_not_sponsored"],
            summary["domains_not_found"]) == (12, 9, 1, 1)
    assert summary["details_read"] == 9 and summary["contacts_added"] == 36 and summary["accounts_synced"] == 1
    assert summary["skipped"] == {"domain not probed": 1}
    assert "broken.example.test" in summary["skipped_examples"][0] and "2400" in summary["skipped_examples"][0]
    # EPP has no list: one domain:info per probed name (the probe's answer is the detail), one
    # contact:info per handle, a poll first, and nothing outside the account's zone
    sent = commands(registry)
    assert sent[:2] == [("login", None), ("poll:req", None)] and sent[-1] == ("logout", None)
    assert sorted(o for c, o in sent if c == "domain:info") == sorted(
        [*NAMES, "broken.example.test", "theirs.example.test", "free.example.test"])
    assert len([c for c, _ in sent if c == "contact:info"]) == 36

    row = sql("SELECT status, statuses, expires_at, nameservers, locked, auto_renew, sponsor, roid, synced_at,"
              " last_error, domain_id FROM registrar_domains WHERE name = 'd03.example.test'")[0]
    assert row == ("clientTransferProhibited", ["clientTransferProhibited"], pendulum.datetime(2027, 4, 4, tz="UTC"),
                   ["ns1.hostmatic.example", "ns2.hostmatic.example"], True, None, CLID, "D000003-SBX", NOW, None,
                   ids["d03.example.test"])
    contacts = sql("SELECT role, handle, email, street, city, country FROM registrar_domain_contacts c"
                   " JOIN registrar_domains r ON r.id = c.registrar_domain_id WHERE r.name = 'd03.example.test'"
                   " ORDER BY role")
    assert contacts == [(role, f"D03-{role[:3].upper()}-0003", f"{role}@d03.example", "4 High Street", "London",
                         "GB") for role in ("admin", "billing", "registrant", "tech")]
    assert sql("SELECT name, outcome FROM registrar_probes ORDER BY name") == [
        ("free.example.test", "not_found"), ("theirs.example.test", "not_sponsored")]
    assert sql("SELECT last_synced_at, last_error FROM registrar_accounts") == [(NOW, None)]

    # reruns (same interval, then the next one): nothing changes; only the failed probe is asked again
    before = snapshot(sql)
    for at in (NOW, LATER):
        n = len(registry.commands)
        again = run(db, at)
        assert (again["domains_added"], again["domains_changed"], again["details_read"], again["contacts_added"],
                again["contacts_changed"], again["contacts_removed"], again["domains_probed"]) == (0, 0, 0, 0, 0, 0, 1)
        assert commands(registry, n) == [("login", None), ("poll:req", None),
                                         ("domain:info", "broken.example.test"), ("logout", None)]
    assert snapshot(sql) == before

    # ProvisioningWork 13 takes the EPP statuses to the panel's domains
    update_registrar_status(db, Interval(LATER, LATER))
    assert sql("SELECT registrar_status, registrar_listed, registrar_expires_at FROM domains WHERE id = %s",
               (ids["d03.example.test"],)) == [("clientTransferProhibited", True, pendulum.datetime(2027, 4, 4, tz="UTC"))]


def test_poll_messages_are_applied_then_acknowledged(synced, sql, registry, db):
    ids, _ = synced
    registry.change_domain("d05.example.test", statuses=["clientHold", "clientTransferProhibited"], notify="update",
                           reason="abuse report")
    registry.transfer("d06.example.test", OTHER)                  # transferred away
    registry.delete_domain("d07.example.test")                    # deleted by the registry
    registry.add_domain(*sandbox.demo_domain("d10.example.test", 12, clid=OTHER))
    registry.transfer("d10.example.test", CLID)                   # transferred in (the panel has no such domain)
    registry.transfer("d08.example.test", OTHER, status="pending")  # asked for, not approved: nothing moves
    summary = run(db, LATER)
    assert (summary["poll_messages"], summary["poll_messages_applied"], summary["poll_messages_acked"]) == (5, 5, 5)
    assert registry.messages(CLID) == []
    assert sql("SELECT domain, kind, outcome, applied_at, acked_at FROM registrar_poll_messages ORDER BY msg_id::int") == [
        ("d05.example.test", "change", "updated", LATER, LATER),
        ("d06.example.test", "transfer", "transferred_away", LATER, LATER),
        ("d07.example.test", "change", "deleted", LATER, LATER),
        ("d10.example.test", "transfer", "transferred_in", LATER, LATER),
        ("d08.example.test", "transfer", "recorded", LATER, LATER)]
    assert summary["domains_changed"] == 4 and summary["domains_unlisted"] == 0
    assert summary["details_read"] == 1 and summary["contacts_added"] == 4    # d10, new to us
    state = {r[0]: r[1:] for r in sql("SELECT name, listed, status, sponsor, changed_at FROM registrar_domains")}
    assert state["d05.example.test"] == (True, "clientHold clientTransferProhibited", CLID, LATER)
    assert state["d06.example.test"][:1] + state["d06.example.test"][2:] == (False, OTHER, LATER)
    assert state["d08.example.test"][:3] == (True, "clientTransferProhibited", CLID)
    assert state["d07.example.test"][0] is False and state["d10.example.test"][:3] == (True, "clientTransferProhibited",
                                                                                       CLID)
    update_registrar_status(db, Interval(LATER, LATER))
    assert dict(sql("SELECT name, registrar_status FROM domains WHERE name IN ('d05.example.test',"
                    " 'd06.example.test')")) == {"d05.example.test": "clientHold clientTransferProhibited",
                                                 "d06.example.test": "clientTransferProhibited"}
    assert sql("SELECT registrar_listed FROM domains WHERE name = 'd06.example.test'") == [(False,)]
    # kept for half a year, then deleted
    assert run(db, LATER.add(days=179))["poll_messages_pruned"] == 0
    assert run(db, LATER.add(days=181))["poll_messages_pruned"] == 5
    assert sql("SELECT count(*) FROM registrar_poll_messages") == [(0,)]


def test_a_crash_between_commit_and_ack_applies_the_message_once(synced, sql, registry, db, monkeypatch):
    registry.change_domain("d05.example.test", statuses=["clientHold"], notify="update")
    real_ack = RegistrarHook.poll_ack

    def lost(self, msg_id):
        raise RegistrarUnavailable("connection lost before the ack")

    monkeypatch.setattr(RegistrarHook, "poll_ack", lost)
    with pytest.raises(EndpointsFailed, match="connection lost before the ack"):
        run(db, LATER)
    assert sql("SELECT outcome, applied_at, acked_at FROM registrar_poll_messages") == [("updated", LATER, None)]
    assert len(registry.messages(CLID)) == 1 and "connection lost" in sql("SELECT last_error FROM registrar_accounts")[0][0]
    # a later read moved the domain on; the message, read again, must not take it back
    sql("UPDATE registrar_domains SET statuses = '{ok}', status = 'ok' WHERE name = 'd05.example.test'")
    monkeypatch.setattr(RegistrarHook, "poll_ack", real_ack)
    summary = run(db, LATER.add(hours=6))
    assert (summary["poll_messages"], summary["poll_messages_applied"], summary["poll_messages_acked"]) == (1, 0, 1)
    assert registry.messages(CLID) == []
    assert sql("SELECT status FROM registrar_domains WHERE name = 'd05.example.test'") == [("ok",)]
    assert sql("SELECT applied_at, acked_at FROM registrar_poll_messages") == [(LATER, LATER.add(hours=6))]


def test_daily_refresh_finds_changes_made_without_a_message(synced, sql, registry, db):
    registry.change_contact("D04-ADM-0004", email="new-admin@d04.example", city="Leeds")
    registry.change_domain("d08.example.test", ns=["ns1.hostmatic.example", "ns3.hostmatic.example"])
    registry.delete_domain("d09.example.test", notify=False)
    assert run(db, LATER)["details_read"] == 0  # read today already
    tomorrow = NOW.add(days=1)
    summary = run(db, tomorrow)
    assert summary["details_read"] == 8 and summary["domains_unlisted"] == 1
    assert (summary["contacts_changed"], summary["domains_changed"]) == (1, 3)  # d04 contact, d08 ns, d09 gone
    assert sql("SELECT c.email, c.city, c.changed_at FROM registrar_domain_contacts c JOIN registrar_domains r"
               " ON r.id = c.registrar_domain_id WHERE r.name = 'd04.example.test' AND c.role = 'admin'") == [
        ("new-admin@d04.example", "Leeds", tomorrow)]
    assert sql("SELECT nameservers, changed_at FROM registrar_domains WHERE name = 'd08.example.test'") == [
        (["ns1.hostmatic.example", "ns3.hostmatic.example"], tomorrow)]
    assert sql("SELECT listed FROM registrar_domains WHERE name = 'd09.example.test'") == [(False,)]


def test_login_refused_and_a_missing_connection(db, sql, registry, monkeypatch):
    account(sql, "Sandbox", "registrar_sandbox")
    account(sql, "Missing", "registrar_nowhere")
    panel_domains(sql, *NAMES)
    summary = run(db)
    assert (summary["accounts"], summary["accounts_failed"], summary["accounts_synced"]) == (2, 1, 1)
    assert summary["skipped"] == {"registrar account not synced": 1}
    assert "registrar_nowhere" in summary["skipped_examples"][0]
    before = snapshot(sql)
    monkeypatch.setenv("AIRFLOW_CONN_REGISTRAR_SANDBOX", json.dumps({
        **json.loads(os.environ["AIRFLOW_CONN_REGISTRAR_SANDBOX"]), "password": "wrong-pw-1"}))
    with pytest.raises(EndpointsFailed, match="login was refused"):
        run(db, LATER)
    assert snapshot(sql) == before


# --- ProvisioningWork 36 ----------------------------------------------------------------------------

@pytest.fixture
def inet(db, sql, registry):
    account(sql, "iNET", "registrar_inet", zones=("com.my",), registrar="inet", nameservers=WANTED)
    panel_domains(sql, "a.com.my", "b.com.my", "locked.com.my", "done.com.my", "extra.com.my")
    assert run(db)["domains_added"] == 5
    return registry


def test_inet_name_servers_are_enforced_once_per_difference(inet, sql, db):
    at = NOW.add(minutes=10)
    n = len(inet.commands)
    summary = enforce_inet_nameservers(db, Interval(at, at), LOG)
    assert (summary["domains_checked"], summary["nameservers_updated"], summary["already_enforced"]) == (4, 3, 0)
    assert summary["skipped"] == {"registrar refused the name servers": 1}
    assert "locked.com.my" in summary["skipped_examples"][0] and "2304" in summary["skipped_examples"][0]
    for name in ("a.com.my", "b.com.my", "extra.com.my"):
        assert sorted(inet.domains[name]["ns"]) == WANTED
    assert inet.domains["locked.com.my"]["ns"] == ["ns1.hostmatic.example", "ns2.hostmatic.example"]
    sent = [(c["command"], c["object"], c["code"]) for c in inet.commands[n:]]
    each = [(("domain:info", name, 1000), ("host:check", "ns1.nsa.example.net", 1000), ("domain:update", name, code))
            for name, code in (("a.com.my", 1000), ("b.com.my", 1000), ("locked.com.my", 2304))]
    removal_only = [("domain:info", "extra.com.my", 1000), ("domain:update", "extra.com.my", 1000)]
    assert sent == [("login", None, 1000), *each[0], *each[1], *each[2], *removal_only, ("logout", None, 1500)]
    updates = sql("SELECT r.name, u.found, u.wanted, u.result_code, u.requested_at FROM registrar_nameserver_updates u"
                  " JOIN registrar_domains r ON r.id = u.registrar_domain_id ORDER BY r.name")
    hostmatic = ["ns1.hostmatic.example", "ns2.hostmatic.example"]
    assert updates == [("a.com.my", hostmatic, WANTED, 1000, at), ("b.com.my", hostmatic, WANTED, 1000, at),
                       ("extra.com.my", ["ns1.hostmatic.example", *WANTED], WANTED, 1000, at),
                       ("locked.com.my", hostmatic, WANTED, 2304, at)]
    assert sql("SELECT nameservers, changed_at FROM registrar_domains WHERE name = 'a.com.my'") == [(WANTED, at)]

    # the next runs send nothing: no session at all; the refusal is still reported
    n = len(inet.commands)
    again = enforce_inet_nameservers(db, Interval(at.add(minutes=10), at.add(minutes=10)), LOG)
    assert inet.commands[n:] == []
    assert again["nameservers_updated"] == 0 and again["skipped"] == {"name servers refused earlier": 1}
    # the sync's next read agrees with what was set
    assert run(db, NOW.add(days=1))["domains_changed"] == 0

    # a new policy is a new difference
    sql("UPDATE registrar_accounts SET nameservers = %s WHERE name = 'iNET'", (["ns1.nsa.example.net",
                                                                              "ns3.nsa.example.net"],))
    later = enforce_inet_nameservers(db, Interval(at.add(hours=1), at.add(hours=1)), LOG)
    assert later["nameservers_updated"] == 4  # a, b, done, extra; locked is refused again (a new difference)
    assert sorted(inet.domains["done.com.my"]["ns"]) == ["ns1.nsa.example.net", "ns3.nsa.example.net"]
    assert ("host:create", "ns3.nsa.example.net") in commands(inet, clid=INET)  # a host object made first


def test_inet_account_without_name_servers_is_reported(db, sql, registry):
    account(sql, "iNET", "registrar_inet", zones=("com.my",), registrar="inet")
    account(sql, "Other", "registrar_sandbox", nameservers=WANTED)  # not iNET: no policy applies
    summary = enforce_inet_nameservers(db, Interval(NOW, NOW), LOG)
    assert summary["skipped"] == {"no name servers configured for the account": 1}
    assert summary["accounts"] == 0 and registry.commands == []
