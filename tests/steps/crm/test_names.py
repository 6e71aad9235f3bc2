"""GroupActionWorkCRM 2 (sync_user_names): the two-way name rule, once per direction, with ETags."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from panelflow.steps.crm.names import sync_user_names
from panelflow.steps.crm.sync import sync_crm_data

from .conftest import LOG, at


@pytest.fixture
def synced(crm, db):
    sync_crm_data(db, at(), LOG)
    return crm


def panel_rename(sql, user, first, last, when):
    sql("UPDATE crm_users SET first_name = %s, last_name = %s, names_changed_at = %s WHERE systemuserid = %s",
        (first, last, when, user))


def names(sql, user):
    return sql("SELECT first_name, last_name, synced_first_name, synced_last_name FROM crm_users"
               " WHERE systemuserid = %s", (user,))[0]


def crm_names(crm, org, user):
    record = crm.orgs[org].users[user]
    return record["firstname"], record["lastname"]


def test_one_side_changed_goes_to_the_other_and_a_rerun_sends_nothing(synced, db, sql):
    panel_rename(sql, synced.alice, "Alicia", "Archer-Smith", datetime(2026, 11, 1, tzinfo=timezone.utc))
    synced.orgs["fabrikam"].edit_user(synced.carol, lastname="Cole-Brown")
    result = sync_user_names(db, at(), {}, LOG)
    assert (result["to_crm"], result["to_panel"], result["conflicts"]) == (1, 1, 0)
    assert crm_names(synced, "contoso", synced.alice) == ("Alicia", "Archer-Smith")
    assert names(sql, synced.alice) == ("Alicia", "Archer-Smith", "Alicia", "Archer-Smith")
    assert names(sql, synced.carol) == ("Carol", "Cole-Brown", "Carol", "Cole-Brown")
    patch = [r for r in synced.api.requests if r[0] == "PATCH"]
    assert len(patch) == 1 and patch[0][3]["If-Match"].startswith('W/"')

    again = sync_user_names(db, at(), {}, LOG)
    assert (again["to_crm"], again["to_panel"], again["agreed"]) == (0, 0, 0)
    assert len([r for r in synced.api.requests if r[0] == "PATCH"]) == 1


@pytest.mark.parametrize("panel_at, winner", [
    (datetime(2026, 12, 1, tzinfo=timezone.utc), "panel"),   # the panel's change is later
    (datetime(2025, 12, 1, tzinfo=timezone.utc), "crm"),     # CRM's change is later
    (None, "crm"),                                           # a panel change with no time loses
])
def test_both_changed_the_later_change_wins(synced, db, sql, panel_at, winner):
    synced.orgs["contoso"].edit_user(synced.bob, firstname="Rob")  # modifiedon: the sandbox's clock (2026-01-01…)
    panel_rename(sql, synced.bob, "Bobby", "Baker", panel_at)
    result = sync_user_names(db, at(), {}, LOG)
    expected = ("Bobby", "Baker") if winner == "panel" else ("Rob", "Baker")
    assert crm_names(synced, "contoso", synced.bob) == expected
    assert names(sql, synced.bob) == expected * 2
    assert result["to_crm" if winner == "panel" else "to_panel"] == 1


def test_a_tie_goes_to_the_panel(synced, db, sql):
    synced.orgs["contoso"].edit_user(synced.bob, firstname="Rob")
    modified = datetime.fromisoformat(synced.orgs["contoso"].users[synced.bob]["modifiedon"].replace("Z", "+00:00"))
    panel_rename(sql, synced.bob, "Bobby", "Baker", modified)
    sync_user_names(db, at(), {}, LOG)
    assert crm_names(synced, "contoso", synced.bob) == ("Bobby", "Baker")


def test_a_412_is_reported_and_the_next_run_applies_the_rule_again(synced, db, sql):
    panel_rename(sql, synced.alice, "Alicia", "Archer", datetime(2026, 12, 1, tzinfo=timezone.utc))
    synced.orgs["contoso"].race(synced.alice, lastname="Changed-In-CRM")
    result = sync_user_names(db, at(), {}, LOG)
    assert (result["conflicts"], result["to_crm"]) == (1, 0)
    assert result["skipped_examples"] == [
        f"user {synced.alice}: CRM changed the user meanwhile (412); the rule is applied again next run"]
    assert names(sql, synced.alice) == ("Alicia", "Archer", "Alice", "Archer")  # nothing written
    # next run: both changed; the panel's change (December) is later than CRM's (the sandbox's January clock)
    result = sync_user_names(db, at(), {}, LOG)
    assert result["to_crm"] == 1
    assert crm_names(synced, "contoso", synced.alice) == ("Alicia", "Archer")


def test_writes_to_crm_are_bounded_per_run(synced, db, sql):
    panel_rename(sql, synced.alice, "A", "One", datetime(2026, 12, 1, tzinfo=timezone.utc))
    panel_rename(sql, synced.bob, "B", "Two", datetime(2026, 12, 1, tzinfo=timezone.utc))
    result = sync_user_names(db, at(), {"name_updates_per_run": 1}, LOG)
    assert (result["to_crm"], result["to_crm_deferred"]) == (1, 1)
    assert sync_user_names(db, at(), {"name_updates_per_run": 1}, LOG)["to_crm"] == 1
