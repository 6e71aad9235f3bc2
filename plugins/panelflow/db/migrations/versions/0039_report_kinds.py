"""Scheduled reports of the usage reports UsageReportWork stores (Exchange usage, add-on usage).

- ``report_schedules.report_kind`` gains ``exchange_usage`` (``exchange_usage_reports``, 0037: per
  organisation and day) and ``addon_usage`` (``addon_usage_reports`` / ``…_lines``, 0038: per
  calendar month). UsageReportScheduleWork (``panelflow.steps.reports``) e-mails them.
- An ``addon_usage`` schedule is monthly: its source is taken once per calendar month, so a day or
  a week has no add-on report of its own to send.
- ``exchange_usage_reports (report_date)``: how far the Exchange report has got (its latest day) is
  what an ``exchange_usage`` period waits for; the primary key leads with the organisation.

Downgrade: schedules of the two kinds (and their ``sent_reports``) are deleted, the old CHECK could
not hold with them.
"""
from alembic import op

revision = "0039"
down_revision = "0038"

DDL = """
ALTER TABLE report_schedules DROP CONSTRAINT report_schedules_report_kind_check;
ALTER TABLE report_schedules ADD CONSTRAINT report_schedules_report_kind_check
    CHECK (report_kind IN ('resource_usage', 'voice_usage', 'exchange_usage', 'addon_usage'));
ALTER TABLE report_schedules ADD CONSTRAINT report_schedules_addon_usage_monthly_check
    CHECK (report_kind <> 'addon_usage' OR frequency = 'monthly');
CREATE INDEX ix_exchange_usage_reports_date ON exchange_usage_reports (report_date);
"""

DROP = """
DROP INDEX ix_exchange_usage_reports_date;
DELETE FROM report_schedules WHERE report_kind IN ('exchange_usage', 'addon_usage');
ALTER TABLE report_schedules DROP CONSTRAINT report_schedules_addon_usage_monthly_check;
ALTER TABLE report_schedules DROP CONSTRAINT report_schedules_report_kind_check;
ALTER TABLE report_schedules ADD CONSTRAINT report_schedules_report_kind_check
    CHECK (report_kind IN ('resource_usage', 'voice_usage'));
"""


def upgrade() -> None:
    op.execute(DDL)


def downgrade() -> None:
    op.execute(DROP)
