"""CallDataProcessWork 1 (Lync): LcsCDR call records → ocs_call_records, exactly once.

The recorded Front End answers ``lync/get_cdr_calls`` the way the script's T-SQL would over a small
LcsCDR: the calls that ended in [EndedFrom, EndedTo), ordered by (SessionEndTime, SessionIdTime,
SessionIdSeq), after the keyset, TOP (MaxRows) — so paging and interval boundaries are exercised.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from panelflow.step import Interval
from panelflow.steps.lync.calls import import_lync_call_records
from steps.lync.records import FE01, FE02, customer, lync_user, on, subscription

UTC = timezone.utc
START = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
FMT = "%Y-%m-%dT%H:%M:%S.%f"


def t(minutes, seconds=0.0) -> str:
    return (START + timedelta(minutes=minutes, seconds=seconds)).strftime(FMT)[:-3]


def cdr(seq, caller, number, invite, answered, ended, code=200, id_time=None):
    """A row of the script's SELECT (LcsCDR UserUri has no sip: prefix; PhoneUri as the gateway gave it)."""
    return {"SessionIdTime": id_time or invite, "SessionIdSeq": seq, "CallerUri": caller, "CalleeNumber": number,
            "InviteTime": invite, "ResponseTime": answered, "SessionEndTime": ended, "ResponseCode": code}


LCSCDR_FIRST = [
    cdr(1, "alice@contoso.com", "+442079460000", t(-3), t(-3, 4.5), t(1, 5.123)),          # 240.623 s: 241
    cdr(2, "alice@contoso.com", "tel:+14255550100;ext=12", t(2), t(2, 3), t(3, 4)),        # 61 s
    cdr(3, "alice@contoso.com", "+33140000000", t(4), None, t(4, 20), code=486),           # busy: 0 s
    cdr(4, "bob@contoso.com", "+442079460001", t(5), t(5, 2), t(6, 2)),                    # no subscription yet
    cdr(5, "mallory@fabrikam.com", "+442079460002", t(7), t(7, 1), t(8, 1)),               # not a panel user
    cdr(6, "alice@contoso.com", None, t(9), t(9, 1), t(9, 31)),                            # no number called
    cdr(7, "alice@contoso.com", "+442079460003", t(9), t(9, 1), t(9, 31), id_time=t(9)),   # same end, next key
    cdr(8, "alice@contoso.com", "+442079460004", t(14), t(14, 1), t(15)),                  # ends at the boundary:
]                                                                                          # the next interval's


def lcscdr(rows):
    def answer(cmd):
        p = cmd.parameters
        key = lambda r: (r["SessionEndTime"], r["SessionIdTime"], r["SessionIdSeq"])  # noqa: E731
        after = (p["AfterEnd"], p["AfterIdTime"], p["AfterIdSeq"]) if p.get("AfterEnd") else None
        chosen = sorted((r for r in rows if p["EndedFrom"] <= r["SessionEndTime"] < p["EndedTo"]
                         and (after is None or key(r) > after)), key=key)
        return chosen[: p["MaxRows"]]
    return answer


LCSCDR: list = []


def records(sql):
    return sql("SELECT subscription_id, caller, destination, started_at, duration_seconds, session_id_seq"
               " FROM ocs_call_records ORDER BY session_id_seq")


def test_calls_ended_in_the_interval_imported_once_unknown_callers_kept(recorded_powershell, pools, billing, sql):
    ps = recorded_powershell
    LCSCDR[:] = LCSCDR_FIRST
    sql("UPDATE lync_pools SET cdr_sql_instance = 'SQLMON02' WHERE name = 'POOL02'")
    sql("INSERT INTO lync_pools (name, fqdn, conn_id, cdr_sql_instance) VALUES ('POOL03', 'lyncpool03.corp.example',"
        " 'lync_fe03', 'sqlmon01\\lyncmon')")     # reports to POOL01's Monitoring store: read once, through FE01
    cust = customer(sql)
    sub = subscription(sql, cust, due=START.date())
    lync_user(sql, pools["POOL01"], "sip:alice@contoso.com", subscription=sub, customer=cust, enabled=True)
    lync_user(sql, pools["POOL01"], "sip:bob@contoso.com", customer=cust, enabled=True)
    ps.answer("lync/get_cdr_calls", lcscdr(LCSCDR), when=on(FE01))
    ps.answer("lync/get_cdr_calls", error="Cannot open database \"LcsCDR\" requested by the login. The login failed.",
              when=on(FE02))
    interval = Interval(START, START + timedelta(minutes=15))

    summary = import_lync_call_records(billing, interval, {"cdr_page_rows": 3})
    assert (summary["cdr_stores"], summary["cdr_stores_failed"]) == (2, 1)
    assert summary["failed_stores"] == ["sqlmon02/lcscdr"]
    assert (summary["calls_read"], summary["calls_imported"], summary["calls_unmatched"]) == (7, 4, 2)
    assert summary["skipped"] == {
        "POOL01: caller is not a panel Lync user": 1, "POOL01: no number called": 1,
        "POOL01: the caller's Lync user has no subscription": 1,
        'PowerShellScriptError: lync/get_cdr_calls: Cannot open database "LcsCDR" requested by the login.'
        ' The login failed.': 1}
    assert "sip:mallory@fabrikam.com at 2026-03-02T10:08:01Z: POOL01: caller is not a panel Lync user" in \
        summary["skipped_examples"]

    # three pages of 3 (the last one short), each after the previous page's last key; UTC text only; the
    # window reaches an hour back for records the Monitoring service wrote late
    assert {c.conn_host for c in ps.calls("lync/get_cdr_calls")} == {FE01, FE02}
    pages = [c.parameters for c in ps.calls("lync/get_cdr_calls") if c.conn_host == FE01]
    assert pages[0] == {"SqlInstance": r"SQLMON01\LYNCMON", "Database": "LcsCDR", "EndedFrom": t(-60),
                        "EndedTo": t(15), "MaxRows": 3}
    assert [(p.get("AfterEnd"), p.get("AfterIdTime"), p.get("AfterIdSeq")) for p in pages[1:]] == [
        (t(4, 20), t(4), 3), (t(9, 31), t(9), 6)]

    assert records(sql) == [
        (sub, "sip:alice@contoso.com", "442079460000", START + timedelta(minutes=-3, seconds=4.5), 241, 1),
        (sub, "sip:alice@contoso.com", "14255550100", START + timedelta(minutes=2, seconds=3), 61, 2),
        (sub, "sip:alice@contoso.com", "33140000000", START + timedelta(minutes=4), 0, 3),
        (sub, "sip:alice@contoso.com", "442079460003", START + timedelta(minutes=9, seconds=1), 30, 7),
    ]
    assert sql("SELECT caller, session_id_seq FROM lync_unmatched_call_records ORDER BY session_id_seq") == [
        ("sip:bob@contoso.com", 4), ("sip:mallory@fabrikam.com", 5)]

    # a rerun and a backfill over the same minutes add nothing
    import_lync_call_records(billing, interval)
    import_lync_call_records(billing, Interval(START - timedelta(hours=1), START + timedelta(minutes=15)))
    assert len(records(sql)) == 4
    assert sql("SELECT count(*) FROM lync_unmatched_call_records") == [(2,)]

    # the next interval takes the call that ended on the boundary, and one the Monitoring service wrote
    # only now though it ended in the first interval
    LCSCDR.append(cdr(9, "alice@contoso.com", "+442079460005", t(10), t(10, 1), t(11)))
    summary = import_lync_call_records(billing, Interval(START + timedelta(minutes=15), START + timedelta(minutes=30)))
    assert (summary["calls_imported"], summary["calls_unmatched"]) == (2, 0)
    # the look-back's unmatched calls were reported by their own interval's run, not again
    assert [reason for reason in summary["skipped"] if reason.startswith("POOL01")] == []
    assert [r[5] for r in records(sql)] == [1, 2, 3, 7, 8, 9]

    # bob's user is linked to the subscription: a later run (his call long out of its window) moves it in
    sql("UPDATE lync_users SET subscription_id = %s WHERE sip_address = 'sip:bob@contoso.com'", (sub,))
    summary = import_lync_call_records(billing, Interval(START + timedelta(minutes=90), START + timedelta(minutes=105)))
    assert (summary["calls_read"], summary["unmatched_calls_matched"]) == (0, 1)
    assert sql("SELECT caller FROM lync_unmatched_call_records") == [("sip:mallory@fabrikam.com",)]
    import_lync_call_records(billing, interval)   # bob's interval again: still one row for his call
    assert sql("SELECT count(*) FROM ocs_call_records WHERE caller = 'sip:bob@contoso.com'") == [(1,)]
    assert [r[5] for r in records(sql)] == [1, 2, 3, 4, 7, 8, 9]


def test_no_pool_with_a_cdr_database_is_nothing_to_do(recorded_powershell, pools, billing, sql):
    sql("UPDATE lync_pools SET cdr_sql_instance = NULL")
    summary = import_lync_call_records(billing, Interval(START, START + timedelta(minutes=15)))
    assert (summary["cdr_stores"], summary["pools_without_cdr"], summary["calls_imported"]) == (0, 2, 0)
    assert recorded_powershell.sent == []


def test_imported_calls_are_what_billingwork_rates(recorded_powershell, pools, billing, sql):
    """The imported records need nothing more: BillingWork's OCS bills rate them per started minute."""
    from decimal import Decimal as D
    from zoneinfo import ZoneInfo

    from panelflow.steps.voice_billing import ocs_call_record_bills

    cust = customer(sql)
    sub = subscription(sql, cust, due=START.date())
    lync_user(sql, pools["POOL01"], "sip:alice@contoso.com", subscription=sub, customer=cust, enabled=True)
    sql("INSERT INTO voice_rates (rate_table, prefix, description, currency, per_minute) VALUES"
        " ('ocs', '44', 'United Kingdom', 'GBP', 0.02), ('ocs', '1', 'North America', 'GBP', 0.01),"
        " ('ocs', '33', 'France', 'GBP', 0.05)")
    recorded_powershell.answer("lync/get_cdr_calls", lcscdr(LCSCDR_FIRST))
    import_lync_call_records(billing, Interval(START, START + timedelta(minutes=15)))

    london = ZoneInfo("Europe/London")
    day = Interval(datetime(2026, 3, 2, 1, 30, tzinfo=london), datetime(2026, 3, 3, 1, 30, tzinfo=london),
                   "Europe/London")
    summary = ocs_call_record_bills(billing, day)
    # 241 s → 5 min × 0.02, 61 s → 2 min × 0.01, busy → 0, 30 s → 1 min × 0.02
    assert (summary["calls_billed"], summary["calls_unanswered"]) == (3, 1)
    assert sql("SELECT subtotal, tax, total FROM invoices WHERE kind = 'ocs' AND customer_id = %s", (cust,)) == [
        (D("0.14"), D("0.03"), D("0.17"))]
