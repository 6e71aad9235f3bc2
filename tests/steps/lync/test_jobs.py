"""GroupActionWorkLync 1 at the PSRP boundary: the real PowerShellHook/pypsrp build each CreatePipeline,
the recorded endpoint decodes it (script text, parameters) and answers as our scripts print on a
Lync Server 2013 / Skype for Business Server 2015 Front End (not run against a real one)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from panelflow.hooks.powershell import script_text
from panelflow.step import Interval
from panelflow.steps.lync.jobs import process_lync_group_actions
from steps.lync.records import FE01, FE02, POOL01_FQDN, customer, job_state, lync_user, on, queue, subscription

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=timezone.utc)
INJECTION = "Pat O'Brien'; Remove-CsUser -Identity * -Confirm:$false; '"
PAT = "sip:pat.o'brien@contoso.com"


def _at(end=T0):
    return Interval(end - timedelta(minutes=5), end)


def cs_user(sip, *, enabled=True, voice=False, line_uri="", voice_policy="", conferencing_policy="", changed=(),
            pool=POOL01_FQDN, identity=None):
    """Get-CsUser after our scripts' Select-Object, as ConvertTo-Json prints it (empty policies are "")."""
    return {"Identity": identity or f"CN={sip[4:]},OU=Contoso,OU=Hosting,DC=corp,DC=example", "SipAddress": sip,
            "DisplayName": sip[4:].split("@")[0], "Enabled": enabled, "EnterpriseVoiceEnabled": voice,
            "LineURI": line_uri, "VoicePolicy": voice_policy, "ConferencingPolicy": conferencing_policy,
            "RegistrarPool": pool, "Changed": list(changed)}


def users(sql):
    return sql("SELECT sip_address, pool_id, subscription_id, ad_user, enabled, enterprise_voice, line_uri,"
               " voice_policy, conferencing_policy, edition, removed_at IS NOT NULL FROM lync_users"
               " ORDER BY sip_address")


def test_lync_jobs_set_states_reject_defer_and_send_values_only_as_parameters(recorded_powershell, pools, billing,
                                                                            sql):
    ps = recorded_powershell
    cust = customer(sql)
    sub = subscription(sql, cust, due=T0.date())
    lync_user(sql, pools["POOL01"], "sip:alice@contoso.com", subscription=sub, customer=cust, enabled=True)
    lync_user(sql, pools["POOL02"], "sip:bob@contoso.com", subscription=sub, customer=cust, enabled=True)
    lync_user(sql, pools["POOL01"], "sip:carol@contoso.com", line_uri="tel:+442071234500", enabled=True)

    ps.answer("lync/enable_user", lambda cmd: [cs_user(cmd.parameters["SipAddress"], identity=INJECTION, voice=True,
                                                         line_uri=cmd.parameters["LineUri"],
                                                         voice_policy=cmd.parameters["VoicePolicy"],
                                                         conferencing_policy=cmd.parameters["ConferencingPolicy"],
                                                         changed=["Enabled", "LineURI", "VoicePolicy",
                                                                  "ConferencingPolicy"])])
    ps.answer("lync/set_line_uri", lambda cmd: [cs_user("sip:alice@contoso.com", voice=True,
                                                          line_uri=cmd.parameters["LineUri"], changed=["LineURI"])])
    ps.answer("lync/grant_user_policy", lambda cmd: [cs_user(
        "sip:alice@contoso.com", voice=True, line_uri="tel:+442071234501",
        conferencing_policy=cmd.parameters.get("PolicyName", ""), changed=["ConferencingPolicy"])])
    ps.answer("lync/set_user_state", [{"Found": False, "Identity": "sip:gone@contoso.com"}],
              when=lambda cmd: cmd.parameters["Identity"] == "sip:gone@contoso.com")
    ps.answer("lync/set_user_state", timeout=True, when=on(FE02))
    ps.answer("lync/remove_user", error="Management object not found for identity \"sip:carol@contoso.com\".")

    jobs = {
        "enable": queue(sql, "enable_user", {
            "pool": "POOL01", "ad_user": INJECTION, "sip_address": PAT, "line_uri": "tel:+442071234599",
            "voice_policy": "UK-National", "conferencing_policy": "Hosted-Conferencing", "subscription_id": sub,
            "display_name": INJECTION}, priority=1),
        "number": queue(sql, "set_line_uri", {"sip_address": "sip:alice@contoso.com", "line_uri": "TEL:+442071234501"}),
        "conferencing": queue(sql, "grant_conferencing_policy", {"sip_address": "sip:Alice@Contoso.com",
                                                                 "policy": "Hosted-Conferencing"}),
        "taken": queue(sql, "set_line_uri", {"sip_address": "sip:alice@contoso.com", "line_uri": "tel:+442071234500"}),
        "gone": queue(sql, "disable_user", {"sip_address": "sip:gone@contoso.com", "pool": "lyncpool01.corp.example"}),
        "unreachable": queue(sql, "disable_user", {"sip_address": "sip:bob@contoso.com"}),
        "refused": queue(sql, "remove_user", {"sip_address": "sip:carol@contoso.com"}),
        "bad_number": queue(sql, "set_line_uri", {"sip_address": "sip:alice@contoso.com", "line_uri": "0207 123"}),
        "unknown_user": queue(sql, "grant_voice_policy", {"sip_address": "sip:nobody@contoso.com"}),
        "bad_action": queue(sql, "move_user", {"sip_address": "sip:alice@contoso.com"}),
    }
    summary = process_lync_group_actions(billing, _at())

    assert summary["claimed"] == 10
    assert (summary["succeeded"], summary["failed"], summary["retry_later"]) == (4, 5, 1)

    # the injection arrives as one literal parameter value, never inside the script text
    enable = ps.calls("lync/enable_user")[0]
    assert enable.is_script and enable.command == script_text("lync/enable_user")
    assert "Remove-CsUser" not in enable.command
    assert enable.parameters == {"Identity": INJECTION, "SipAddress": PAT, "RegistrarPool": POOL01_FQDN,
                                 "LineUri": "tel:+442071234599", "VoicePolicy": "UK-National",
                                 "ConferencingPolicy": "Hosted-Conferencing"}
    assert enable.clixml.count("Remove-CsUser") == 1 and enable.conn_host == FE01

    # every command the pools received, in queue order, with exactly these parameters
    assert [(c.script, c.conn_host, c.parameters) for c in ps.sent[1:]] == [
        ("lync/set_line_uri", FE01, {"Identity": "sip:alice@contoso.com", "LineUri": "tel:+442071234501"}),
        ("lync/grant_user_policy", FE01, {"Identity": "sip:alice@contoso.com", "PolicyType": "Conferencing",
                                          "PolicyName": "Hosted-Conferencing"}),
        ("lync/set_user_state", FE01, {"Identity": "sip:gone@contoso.com", "Enabled": False}),
        ("lync/set_user_state", FE02, {"Identity": "sip:bob@contoso.com", "Enabled": False}),
        ("lync/remove_user", FE01, {"Identity": "sip:carol@contoso.com"}),
    ]

    assert job_state(sql, jobs["enable"])[:2] == ("succeeded", 1)
    assert job_state(sql, jobs["enable"])[2]["changed"] == ["Enabled", "LineURI", "VoicePolicy", "ConferencingPolicy"]
    assert job_state(sql, jobs["gone"])[2] == {"pool": "POOL01", "sip_address": "sip:gone@contoso.com",
                                                "enabled": False, "already_absent": True}
    assert job_state(sql, jobs["taken"])[::3] == ("failed", "tel:+442071234500 is already assigned to "
                                                            "sip:carol@contoso.com")
    assert job_state(sql, jobs["unreachable"])[0] == "pending"
    assert "Read timed out" in job_state(sql, jobs["unreachable"])[3]
    assert job_state(sql, jobs["refused"])[::3] == (
        "failed", 'POOL01: Management object not found for identity "sip:carol@contoso.com".')
    assert job_state(sql, jobs["bad_number"])[::3] == (
        "failed", "line URI '0207 123' is not tel:+E.164 (with an optional ;ext=)")
    assert job_state(sql, jobs["unknown_user"])[::3] == ("failed", "payload has no 'pool'")
    assert job_state(sql, jobs["bad_action"])[::3] == ("failed", "unknown lync action 'move_user'")

    # the panel keeps what the server answered; the edition follows the features
    assert users(sql) == [
        ("sip:alice@contoso.com", pools["POOL01"], sub, "alice@contoso.com", True, True, "tel:+442071234501", None,
         "Hosted-Conferencing", "Plus", False),
        ("sip:bob@contoso.com", pools["POOL02"], sub, "bob@contoso.com", True, False, None, None, None, "Standard",
         False),
        ("sip:carol@contoso.com", pools["POOL01"], None, "carol@contoso.com", True, False, "tel:+442071234500", None,
         None, "Standard", False),
        (PAT, pools["POOL01"], sub, INJECTION, True, True, "tel:+442071234599", "UK-National", "Hosted-Conferencing",
         "Plus", False),
    ]
    assert sql("SELECT customer_id, display_name FROM lync_users WHERE sip_address = %s", (PAT,)) == [(cust, INJECTION)]

    # the next run: POOL02 answers now; the deferred job is done once, the finished ones are not redone
    ps.answer("lync/set_user_state", lambda cmd: [{"Found": True, **cs_user("sip:bob@contoso.com", enabled=False,
                                                                            pool="lyncpool02.corp.example",
                                                                            changed=["Enabled"])}], when=on(FE02))
    sent = len(ps.sent)
    summary = process_lync_group_actions(billing, _at(T0 + timedelta(minutes=5)))
    assert (summary["claimed"], summary["succeeded"]) == (1, 1)
    assert [(c.script, c.conn_host) for c in ps.sent[sent:]] == [("lync/set_user_state", FE02)]
    assert job_state(sql, jobs["unreachable"])[:2] == ("succeeded", 2)
    assert sql("SELECT enabled FROM lync_users WHERE sip_address = 'sip:bob@contoso.com'") == [(False,)]


def test_enable_retried_after_a_lost_answer_and_remove_leave_one_row(recorded_powershell, pools, billing, sql):
    """A worker killed after Enable-CsUser re-takes the job: the script finds the user enabled and
    changes nothing; the panel still has one row. remove_user clears the Lync attributes."""
    ps = recorded_powershell
    ps.answer("lync/enable_user", lambda cmd: [cs_user(cmd.parameters["SipAddress"], changed=[])])
    ps.answer("lync/remove_user", [{"Found": True, "Identity": "sip:dave@contoso.com",
                                    "SipAddress": "sip:dave@contoso.com"}])
    payload = {"pool": "POOL01", "ad_user": "dave@contoso.com", "sip_address": "sip:dave@contoso.com"}
    first = queue(sql, "enable_user", payload)
    sql("UPDATE group_action_jobs SET status = 'running', attempts = 1, started_at = %s WHERE id = %s",
        (T0 - timedelta(hours=2), first))
    again = queue(sql, "enable_user", payload)
    summary = process_lync_group_actions(billing, _at())
    assert (summary["claimed"], summary["reclaimed"], summary["succeeded"]) == (2, 1, 2)
    assert [c.parameters for c in ps.calls("lync/enable_user")] == [
        {"Identity": "dave@contoso.com", "SipAddress": "sip:dave@contoso.com", "RegistrarPool": POOL01_FQDN}] * 2
    assert job_state(sql, again)[2]["changed"] == []
    assert sql("SELECT count(*), bool_and(enabled) FROM lync_users") == [(1, True)]

    queue(sql, "remove_user", {"sip_address": "sip:dave@contoso.com"})
    process_lync_group_actions(billing, _at(T0 + timedelta(minutes=5)))
    assert sql("SELECT enabled, line_uri, removed_at FROM lync_users") == [(False, None, T0 + timedelta(minutes=5))]
