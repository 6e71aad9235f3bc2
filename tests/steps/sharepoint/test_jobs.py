"""GroupActionWorkSP (panelflow.steps.sharepoint.jobs): the ``sp`` queue as SharePoint snap-in scripts at the
PSRP boundary — the scripts and parameters that reach the farm, exactly once per job."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from psycopg.types.json import Jsonb

from panelflow.hooks.powershell import script_text
from steps.sharepoint.records import CONTOSO, FARM1, FARM2, GIB, HOSTILE, MIB, NORTHWIND, T0, at, farm_site, on

NEW = "https://sp2019.corp.example/sites/Projects"


def _job(sql, action, payload, priority=5):
    return sql("INSERT INTO group_action_jobs (backend, action, payload, priority) VALUES ('sp', %s, %s, %s)"
               " RETURNING id", (action, Jsonb(payload), priority))[0][0]


def _process(panel_db, end=T0):
    from panelflow.steps.sharepoint.jobs import process_sharepoint_group_actions

    return process_sharepoint_group_actions(panel_db, at(end, 5), {}, None)


def _state(sql, job):
    return sql("SELECT status, result, error FROM group_action_jobs WHERE id = %s", (job,))[0]


def _created(sent):
    site = farm_site(NEW, owner=sent.parameters["OwnerAlias"], quota=sent.parameters.get("MaxSizeBytes") or 0,
                     used=0, title=sent.parameters.get("Name"), template=sent.parameters.get("Template"))
    return [{**site, "Created": True}]


def test_create_site_collection_once_with_every_value_a_parameter(recorded_powershell, farms, customer, panel_db,
                                                                 sql):
    recorded_powershell.answer("sharepoint/create_site", _created, when=on(FARM1))
    job = _job(sql, "create_site_collection", {
        "farm": "sp2019", "url": NEW, "owner": "CORP\\o'brien", "secondary_owner": "CORP\\bob", "template": "STS#3",
        "title": HOSTILE, "quota_mb": 2048, "customer_id": customer["customer"], "subscription_id": customer["sub1"]})

    out = _process(panel_db)
    assert (out["succeeded"], out["failed"]) == (1, 0), out
    (sent,) = recorded_powershell.calls("sharepoint/create_site")
    assert sent.conn_host == FARM1 and sent.is_script
    assert sent.command == script_text("sharepoint/create_site")           # the script as it is in the repo …
    assert HOSTILE not in sent.command                                      # … the hostile title only a value
    assert sent.parameters == {"Url": NEW, "OwnerAlias": "CORP\\o'brien", "SecondaryOwnerAlias": "CORP\\bob",
                               "Template": "STS#3", "Name": HOSTILE, "MaxSizeBytes": 2048 * MIB,
                               "WarningSizeBytes": int(2048 * 0.9) * MIB}
    assert '<I64 N="V">2147483648</I64>' in sent.clixml                    # sizes travel as Int64
    status, result, error = _state(sql, job)
    assert (status, error) == ("succeeded", None)
    assert result == {"farm": "SP2019", "url": NEW, "site_id": "3f1c2a0e-8d7b-4c6a-9e5f-1a2b3c4d5e6f",
                      "created": True, "quota_mb": 2048.0}
    assert sql("SELECT url, farm_id, title, owners, quota_mb, customer_id, subscription_id, first_seen_at"
               " FROM sharepoint_site_collections") == [
        (NEW.lower(), farms["SP2019"], HOSTILE, ["CORP\\o'brien"], Decimal("2048.000"), customer["customer"],
         customer["sub1"], T0)]

    # a retry after a lost answer: the farm returns the site that is there, the panel keeps one row
    recorded_powershell.answer("sharepoint/create_site", lambda s: [{**_created(s)[0], "Created": False}])
    sql("UPDATE group_action_jobs SET status = 'pending' WHERE id = %s", (job,))
    _process(panel_db, T0 + timedelta(minutes=5))
    assert _state(sql, job)[1]["created"] is False
    assert sql("SELECT count(*), min(subscription_id) FROM sharepoint_site_collections") == [(1, customer["sub1"])]


def test_quota_lock_unlock_and_delete_set_states(recorded_powershell, farms, panel_db, sql):
    sql("INSERT INTO sharepoint_site_collections (farm_id, url, owners, quota_mb, storage_used_mb, lock_state,"
        " first_seen_at, synced_at, changed_at) VALUES (%s, %s, '{}', 10240, 2560, 'Unlock', %s, %s, %s)",
        (farms["SP2019"], CONTOSO, T0, T0, T0))
    state = {"quota": 10 * GIB, "lock": "Unlock"}

    def set_site(sent):
        if "MaxSizeBytes" in sent.parameters:
            state["quota"] = sent.parameters["MaxSizeBytes"]
        state["lock"] = sent.parameters.get("LockState", state["lock"])
        return [{"Url": CONTOSO, "Id": "3f1c2a0e-8d7b-4c6a-9e5f-1a2b3c4d5e6f", "QuotaBytes": state["quota"],
                 "StorageUsedBytes": 2560 * MIB, "LockState": state["lock"]}]

    recorded_powershell.answer("sharepoint/set_site", set_site, when=on(FARM1))
    recorded_powershell.answer("sharepoint/remove_site", lambda s: [{"Url": s.parameters["Url"], "Found": False,
                                                                     "Id": None}], times=1)   # tried second
    recorded_powershell.answer("sharepoint/remove_site", lambda s: [{"Url": s.parameters["Url"], "Found": True,
                                                                     "Id": "3f1c2a0e"}], times=1)
    jobs = [_job(sql, "set_quota", {"url": CONTOSO + "/", "quota_mb": 20480, "warning_mb": 18000}, 1),
            _job(sql, "lock", {"url": CONTOSO, "lock_state": "ReadOnly"}, 2),
            _job(sql, "unlock", {"url": CONTOSO}, 3),
            _job(sql, "delete", {"url": CONTOSO}, 4),
            _job(sql, "delete", {"url": CONTOSO}, 5)]                      # the same delete again: already gone

    out = _process(panel_db)
    assert out["succeeded"] == 5, out
    assert [(c.script, c.parameters) for c in recorded_powershell.sent] == [
        ("sharepoint/set_site", {"Url": CONTOSO + "/", "MaxSizeBytes": 20480 * MIB, "WarningSizeBytes": 18000 * MIB}),
        ("sharepoint/set_site", {"Url": CONTOSO, "LockState": "ReadOnly"}),
        ("sharepoint/set_site", {"Url": CONTOSO, "LockState": "Unlock"}),
        ("sharepoint/remove_site", {"Url": CONTOSO}),
        ("sharepoint/remove_site", {"Url": CONTOSO})]
    assert {c.conn_host for c in recorded_powershell.sent} == {FARM1}        # the site's own farm
    assert [_state(sql, j)[1] for j in jobs] == [
        {"farm": "SP2019", "url": CONTOSO, "quota_mb": 20480.0, "storage_used_mb": 2560.0},
        {"farm": "SP2019", "url": CONTOSO, "lock_state": "ReadOnly"},
        {"farm": "SP2019", "url": CONTOSO, "lock_state": "Unlock"},
        {"farm": "SP2019", "url": CONTOSO, "deleted": True},
        {"farm": "SP2019", "url": CONTOSO, "deleted": False, "already_absent": True}]
    assert sql("SELECT quota_mb, lock_state, deleted_at FROM sharepoint_site_collections") == [
        (Decimal("20480.000"), "Unlock", T0)]


def test_bad_jobs_online_sites_and_farm_errors(recorded_powershell, farms, online, panel_db, sql):
    sites = online(tenants=1)
    tenant = sites.graph.tenant_id(0)
    sql("INSERT INTO sharepoint_site_collections (tenant_id, url, first_seen_at, synced_at, changed_at)"
        " VALUES (%s, 'https://tenant0.sharepoint.com/sites/sales', %s, %s, %s)", (tenant, T0, T0, T0))
    recorded_powershell.answer("sharepoint/create_site", error="Another site already exists at "
                                                                "https://sp2019.corp.example/sites/x.", when=on(FARM1))
    recorded_powershell.answer("sharepoint/set_site", timeout=True, when=on(FARM2))
    jobs = {
        "online lock": _job(sql, "lock", {"tenant_id": tenant, "url": NEW}),
        "online quota": _job(sql, "set_quota", {"url": "https://tenant0.sharepoint.com/sites/sales", "quota_mb": 1}),
        "bad url": _job(sql, "lock", {"url": "javascript:alert(1)"}),
        "unknown farm": _job(sql, "create_site_collection", {"farm": "nope", "url": NEW, "owner": "a"}),
        "no farm": _job(sql, "unlock", {"url": NEW}),
        "bad quota": _job(sql, "set_quota", {"url": NEW, "farm": "SP2019", "quota_mb": "2048"}),
        "bad template": _job(sql, "create_site_collection", {"farm": "SP2019", "url": NEW, "owner": "a",
                                                             "template": "STS#3; Remove-SPSite"}),
        "farm refuses": _job(sql, "create_site_collection", {"farm": "SP2019", "url": NEW, "owner": "a"}),
        "farm times out": _job(sql, "lock", {"farm": "SPSE", "url": NORTHWIND}),
        "farm still down": _job(sql, "unlock", {"farm": "SPSE", "url": NORTHWIND}),
    }
    out = _process(panel_db)
    assert (out["failed"], out["retry_later"], out["succeeded"]) == (8, 2, 0), out
    errors = {name: _state(sql, job)[::2] for name, job in jobs.items()}
    assert errors["online lock"] == ("failed", "SharePoint Online: Microsoft Graph has no API to lock a site "
                                               "(Set-SPOSite -LockState)")
    assert errors["online quota"] == ("failed", "SharePoint Online: Microsoft Graph has no API to set a site's "
                                                "storage quota (Set-SPOSite -StorageQuota)")
    assert errors["bad url"] == ("failed", "payload 'url' is not an absolute http(s) URL: 'javascript:alert(1)'")
    assert errors["unknown farm"] == ("failed", "no SharePoint farm 'nope'")
    assert errors["no farm"] == ("failed", "payload has no 'farm'")
    assert errors["bad quota"] == ("failed", "payload 'quota_mb' must be a whole number from 0 to 26214400")
    assert errors["bad template"][1].startswith("payload 'template' is not a web template name")
    assert errors["farm refuses"] == ("failed", "SP2019: Another site already exists at "
                                                "https://sp2019.corp.example/sites/x.")
    assert errors["farm times out"][0] == "pending" and "ReadTimeout" in errors["farm times out"][1]
    assert errors["farm still down"][0] == "pending" and errors["farm still down"][1].startswith(
        "SPSE not tried: unreachable earlier in this run")
    assert [c.script for c in recorded_powershell.sent] == ["sharepoint/create_site", "sharepoint/set_site"]
    assert sql("SELECT count(*) FROM sharepoint_site_collections")[0][0] == 1


def test_an_empty_queue_is_a_summary(panel_db):
    assert _process(panel_db)["claimed"] == 0


def test_online_team_site_is_created_with_its_group_exactly_once(online, customer, panel_db, sql):
    sites = online(tenants=1)
    tenant = sites.graph.tenant_id(0)
    owner = sites.graph.user(0, sites.graph.user_ids(0)[0])["userPrincipalName"]
    sites.provision_delay = 1                            # SharePoint answers 404 for the site once
    sites.lose_next_answer("POST")                       # Graph creates the group, the answer is lost
    job = _job(sql, "create_site_collection", {"tenant_id": tenant, "alias": "projects", "title": HOSTILE,
                                               "owner": owner, "subscription_id": customer["sub2"]})
    out = _process(panel_db)
    assert out["succeeded"] == 1, out
    result = _state(sql, job)[1]
    assert result["created"] is False and result["site_provisioned"] is False   # found by its alias after the 504
    assert result["url"] == "https://tenant0.sharepoint.com/sites/projects"
    groups = [g for g in sites.graph._tenant(0).groups.items.values() if g.get("mailNickname") == "projects"]
    assert len(groups) == 1 and groups[0]["displayName"] == HOSTILE                  # one group, whatever the retries
    assert [w[1:] for w in sites.writes] == [("POST", "/groups", 504), ("POST", "/groups", 400)]
    assert sql("SELECT tenant_id::text, url, site_id, owners, customer_id, subscription_id"
               " FROM sharepoint_site_collections") == [
        (tenant, "https://tenant0.sharepoint.com/sites/projects", None, [owner], customer["customer"],
         customer["sub2"])]

    # queued again (the panel retries): the same group, now with its provisioned site
    sql("UPDATE group_action_jobs SET status = 'pending' WHERE id = %s", (job,))
    _process(panel_db, T0 + timedelta(minutes=5))
    result = _state(sql, job)[1]
    assert (result["created"], result["site_provisioned"], result["group_id"]) == (False, True, groups[0]["id"])
    assert sql("SELECT count(*), min(site_id) FROM sharepoint_site_collections") == [(1, result["site_id"])]
    assert len([w for w in sites.writes if w[1] == "POST"]) == 2


def test_online_delete_removes_the_group_site_once_and_refuses_a_site_without_group(online, panel_db, sql):
    from panelflow.steps.sharepoint.sync import sync_sharepoint_data

    sites = online(tenants=1)
    sales = sites.add_site(0, "sales")
    sites.add_site(0, "intranet", group=False)
    sync_sharepoint_data(panel_db, at(T0 - timedelta(hours=1)), {}, None)
    jobs = [_job(sql, "delete", {"url": "https://tenant0.sharepoint.com/sites/sales"}, 1),
            _job(sql, "delete", {"url": "https://tenant0.sharepoint.com/sites/sales"}, 2),
            _job(sql, "delete", {"url": "https://tenant0.sharepoint.com/sites/intranet"}, 3)]
    out = _process(panel_db)
    assert (out["succeeded"], out["failed"]) == (2, 1), out
    group = sites.removed[sites.graph.tenant_id(0)][sales]["group_id"]
    assert _state(sql, jobs[0])[1] == {"tenant_id": sites.graph.tenant_id(0), "group_id": group, "deleted": True,
                                       "url": "https://tenant0.sharepoint.com/sites/sales"}
    assert _state(sql, jobs[1])[1]["already_absent"] is True
    assert _state(sql, jobs[2])[2].startswith("SharePoint Online: Microsoft Graph deletes only a group-connected site")
    assert [w[1:] for w in sites.writes] == [("DELETE", f"/groups/{group}", 204)]
    assert sql("SELECT url, deleted_at FROM sharepoint_site_collections ORDER BY url") == [
        ("https://tenant0.sharepoint.com/sites/intranet", None), ("https://tenant0.sharepoint.com/sites/sales", T0)]
