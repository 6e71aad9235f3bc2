"""ProvisioningWork's retention steps on the real panel database."""

from __future__ import annotations

import pendulum
import pytest

from panelflow.step import Interval
from panelflow.steps import retention

END = pendulum.datetime(2026, 11, 20, 3, 0, tz="UTC")
AT = Interval(END, END)


def fill(sql, table, column, ages_days, extra_cols="", extra_vals=""):
    """Insert one row per age (days before END)."""
    sql(
        f"INSERT INTO {table} ({extra_cols}{column}) "
        f"SELECT {extra_vals}%s::timestamptz - make_interval(days => a) FROM unnest(%s::int[]) AS a",
        (END, list(ages_days)),
    )


CASES = {
    "delete_old_service_queue_logs": ("service_queue_logs", "logged_at", "order_id, message, ", "1, 'provisioned', ", 90),
    "delete_old_voice_bill_records": ("voice_bill_records", "billed_at", "company_id, subscriber, amount, currency, ",
                                      "7, '+4420', 0.12, 'GBP', ", 100),
    "delete_old_email_logs": ("email_logs", "sent_at", "recipient, subject, status, ", "'a@b.example', 's', 'sent', ", None),
}


@pytest.mark.parametrize("step", sorted(CASES))
def test_deletes_only_what_is_older_than_the_age(panel_db, sql, step):
    table, column, cols, vals, days = CASES[step]
    if days is None:  # "2 months": 20 Sep 2026 03:00 is the cutoff
        fill(sql, table, column, [62, 63, 100, 61, 0, 1], cols, vals)  # 61 days is exactly the cutoff: kept
        expect_left = 3
    else:
        fill(sql, table, column, [days + 1, days + 30, 400, days - 1, 0, 1], cols, vals)
        expect_left = 3
    summary = getattr(retention, step)(panel_db, AT)
    assert summary["deleted"] == 3
    assert sql(f"SELECT count(*) FROM {table}")[0][0] == expect_left
    cutoff = pendulum.parse(summary["cutoff"])
    assert sql(f"SELECT count(*) FROM {table} WHERE {column} < %s", (cutoff,))[0][0] == 0
    # a rerun of the same interval deletes nothing more
    assert getattr(retention, step)(panel_db, AT)["deleted"] == 0
    assert sql(f"SELECT count(*) FROM {table}")[0][0] == expect_left


def test_age_exactly_at_cutoff_is_kept(panel_db, sql):
    fill(sql, "service_queue_logs", "logged_at", [90, 91], "order_id, message, ", "1, 'x', ")
    assert retention.delete_old_service_queue_logs(panel_db, AT)["deleted"] == 1
    assert sql("SELECT count(*) FROM service_queue_logs")[0][0] == 1


def test_top_n_bound_per_run_and_rerun_deletes_nothing_more(panel_db, sql):
    """'Delete top 100 Azure rates older than 2 years': 250 old rows → 100 per run, oldest first."""
    sql(
        "INSERT INTO azure_rates (meter_id, region, unit_price, currency, effective_date, fetched_at) "
        "SELECT 'm' || g, 'uksouth', 0.01, 'USD', '2023-01-01', %s::timestamptz - make_interval(days => 800 + g) "
        "FROM generate_series(1, 250) g",
        (END,),
    )
    sql("INSERT INTO azure_rates (meter_id, region, unit_price, currency, effective_date, fetched_at) "
        "SELECT 'new' || g, 'uksouth', 0.01, 'USD', '2026-01-01', %s FROM generate_series(1, 5) g", (END,))
    first = retention.delete_old_azure_rates(panel_db, AT)
    assert first["deleted"] == 100 and first["budget_left"] == 0
    # the oldest went first
    assert sql("SELECT count(*) FROM azure_rates WHERE meter_id LIKE 'm%%' AND substr(meter_id, 2)::int > 150")[0][0] == 0
    # retry / rerun of the same run: the budget is spent, nothing more goes
    assert retention.delete_old_azure_rates(panel_db, AT)["deleted"] == 0
    assert sql("SELECT count(*) FROM azure_rates")[0][0] == 155
    # the next run (next interval) takes the next 100
    nxt = Interval(END.add(minutes=10), END.add(minutes=10))
    assert retention.delete_old_azure_rates(panel_db, nxt)["deleted"] == 100
    assert sql("SELECT count(*) FROM azure_rates")[0][0] == 55


def test_batches_respect_the_bound(panel_db, sql, monkeypatch):
    """12,345 old temp rows, top 10000 per run, batches of 3000 → 4 batches, 10000 rows."""
    monkeypatch.setattr(retention, "BATCH", 3000)
    sql("INSERT INTO temp_data (kind, created_at) SELECT 'cart', %s::timestamptz - interval '200 days' "
        "FROM generate_series(1, 12345)", (END,))
    sql("INSERT INTO temp_data (kind, created_at) SELECT 'cart', %s::timestamptz - interval '119 days' "
        "FROM generate_series(1, 10)", (END,))
    summary = retention.delete_old_temp_data(panel_db, AT)
    assert summary["deleted"] == 10_000 and summary["batches"] == 4
    assert sql("SELECT count(*) FROM temp_data")[0][0] == 2355
    assert sql("SELECT deleted FROM retention_runs WHERE task = 'delete_old_temp_data'")[0][0] == 10_000


def test_o365_reconciliation_top_1000_older_than_a_year(panel_db, sql):
    sql("INSERT INTO o365_subscription_reconciliations (tenant_id, subscription_id, reconciled_at) "
        "SELECT 't', 's' || g, %s::timestamptz - interval '1 year' - make_interval(days => g %% 3) "
        "FROM generate_series(1, 1200) g", (END,))
    summary = retention.delete_old_o365_reconciliation_records(panel_db, AT)
    # g % 3 == 0 rows are exactly one year old: kept; 800 are older: all deleted (under the 1000 bound)
    assert summary["deleted"] == 800
    assert sql("SELECT count(*) FROM o365_subscription_reconciliations")[0][0] == 400


def test_clock_is_the_data_interval_not_now(panel_db, sql):
    """A backfilled run from March deletes what was old in March, not what is old today."""
    march = pendulum.datetime(2026, 3, 1, tz="UTC")
    sql("INSERT INTO email_logs (recipient, subject, status, sent_at) VALUES "
        "('a@b.example', 'old in march', 'sent', '2025-12-01'), ('a@b.example', 'recent in march', 'sent', '2026-02-01')")
    assert retention.delete_old_email_logs(panel_db, Interval(march, march))["deleted"] == 1
    assert [r[0] for r in sql("SELECT subject FROM email_logs")] == ["recent in march"]


def test_bookkeeping_is_pruned(panel_db, sql):
    sql("INSERT INTO retention_runs (task, interval_end, deleted) VALUES "
        "('delete_old_email_logs', %s::timestamptz - interval '40 days', 5), "
        "('delete_old_email_logs', %s::timestamptz - interval '3 days', 5)", (END, END))
    retention.delete_old_email_logs(panel_db, AT)
    assert sql("SELECT count(*) FROM retention_runs WHERE task = 'delete_old_email_logs'")[0][0] == 2  # 3 days + this run


def test_audit_logs_move_to_the_archive_once(panel_db, sql):
    sql("INSERT INTO audit_logs (occurred_at, actor, action, target) SELECT %s::timestamptz - make_interval(days => d),"
        " 'admin', 'login', 'panel' FROM unnest(ARRAY[1, 179, 180, 181, 400, 3000]) d", (END,))
    summary = retention.archive_audit_logs(panel_db, AT)
    assert summary["archived"] == 3 and summary["archive_pruned"] == 1  # 181 and 400 stay archived; 3000 days > 7 y
    live = sorted(r[0] for r in sql("SELECT (%s::timestamptz - occurred_at) FROM audit_logs", (END,)))
    assert [d.days for d in live] == [1, 179, 180]
    archived = sql("SELECT (%s::timestamptz - occurred_at), archived_at FROM audit_logs_archive ORDER BY 1", (END,))
    assert [(d.days, at) for d, at in archived] == [(181, END), (400, END)]
    # ids are kept, so an entry is in exactly one table; a rerun moves nothing more
    assert sql("SELECT count(*) FROM audit_logs a JOIN audit_logs_archive b USING (id)")[0][0] == 0
    again = retention.archive_audit_logs(panel_db, AT)
    assert again["archived"] == 0 and again["archive_pruned"] == 0


def test_o365_audit_logs_keep_their_tenant(panel_db, sql, monkeypatch):
    monkeypatch.setattr(retention, "BATCH", 40)
    sql("INSERT INTO o365_admin_audit_logs (occurred_at, actor, action, tenant_id) SELECT"
        " %s::timestamptz - interval '200 days', 'admin@t.example', 'Add user', 'tenant-' || g %% 3"
        " FROM generate_series(1, 100) g", (END,))
    summary = retention.archive_o365_audit_logs(panel_db, AT)
    assert summary["archived"] == 100 and summary["archive_batches"] == 3
    assert dict(sql("SELECT tenant_id, count(*) FROM o365_admin_audit_logs_archive GROUP BY 1")) == {
        "tenant-0": 33, "tenant-1": 34, "tenant-2": 33}
    assert sql("SELECT count(*) FROM o365_admin_audit_logs")[0][0] == 0
