"""Failure alerts: one e-mail to the thread's owners when a step fails for good.

A task-level ``on_failure_callback`` (it runs in the worker after the last try), so the mail
can name the step, the try and the error. Sent through the Airflow SMTP connection
``smtp_default`` by the SMTP provider's hook: the server and its credentials live in the
connection, never here.

Before the mail, the failure is recorded in the panel DB's ``step_failures``
(panelflow.services.digest.record_failure) for the daily digest and a year's history: the panel
DB reached through the hook the StepOperator writes run counts with, the day being the one the
run's data interval ends on in the step's time zone (as the run counts are). Recording is best
effort: a database that is down must not cost the alert, so its error is logged, never raised,
and the e-mail is sent either way.
"""

from __future__ import annotations

import html
import traceback
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

from airflow.sdk import BaseNotifier

ERROR_LINES = 15


def error_tail(exception: BaseException | str | None, lines: int = ERROR_LINES) -> str:
    if exception is None:
        return "(no exception recorded; see the log)"
    if isinstance(exception, BaseException):
        text = "".join(traceback.format_exception(type(exception), exception, exception.__traceback__))
    else:
        text = str(exception)
    return "\n".join(text.rstrip().splitlines()[-lines:])


class ThreadFailureNotifier(BaseNotifier):
    """E-mails thread, step, run, try number, the error's last lines and a link to the log."""

    template_fields = ()

    def __init__(self, *, thread: str, to: list[str], smtp_conn_id: str = "smtp_default",
                 from_email: str | None = None):
        super().__init__()
        self.thread = thread
        self.to = list(to)
        self.smtp_conn_id = smtp_conn_id
        self.from_email = from_email

    def message(self, context) -> tuple[str, str]:
        ti = context["ti"]
        step = getattr(context.get("task"), "task_display_name", None) or ti.task_id
        tail = error_tail(context.get("exception"))
        log_url = getattr(ti, "log_url", "")
        subject = f"[panelflow] {self.thread} failed: {ti.task_id} (run {ti.run_id}, try {ti.try_number})"
        rows = [
            ("Thread", f"{self.thread} ({ti.dag_id})"),
            ("Step", f"{ti.task_id}: {step}"),
            ("Run", ti.run_id),
            ("Try", str(ti.try_number)),
        ]
        body = "".join(f"<tr><th align='left'>{k}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
        content = (
            f"<p>A step of <b>{html.escape(self.thread)}</b> failed after its last try.</p>"
            f"<table>{body}</table>"
            f"<p>Last lines of the error:</p><pre>{html.escape(tail)}</pre>"
            f"<p><a href=\"{html.escape(log_url)}\">Open the task log</a> {html.escape(log_url)}</p>"
        )
        return subject, content

    def record(self, context) -> bool:
        """Keep this failure in ``step_failures`` (once per try); False when not recorded.

        The step's time zone is the task's (a StepOperator's ``timezone``, the one its run counts
        use), else its DAG's, else UTC. Never raises: see the module's docstring.
        """
        ti = context.get("ti")
        if ti is None:
            return False
        try:
            from panelflow.operators import _panel_db, run_interval
            from panelflow.services.digest import record_failure

            tz = getattr(context.get("task"), "timezone", None)
            if not isinstance(tz, str) or not tz:  # not a StepOperator: the DAG's zone (the catalog's)
                tz = getattr(getattr(context.get("dag"), "timezone", None), "name", None) or "UTC"
            ended = getattr(ti, "end_date", None)
            failed_at = ended if isinstance(ended, datetime) else datetime.now(timezone.utc)
            day = run_interval(context, tz).end.astimezone(ZoneInfo(tz)).date()
            with _panel_db().get_conn() as conn:
                record_failure(conn, dag_id=ti.dag_id, run_id=ti.run_id, task_id=ti.task_id,
                               map_index=getattr(ti, "map_index", None), try_number=ti.try_number,
                               thread=self.thread, step_id=ti.task_id, failed_at=failed_at, run_day=day,
                               error=error_tail(context.get("exception")))
            return True
        except Exception:  # noqa: BLE001 - the alert matters more than its record
            self.log.warning("%s: failure of %s not recorded in step_failures (the alert still goes)",
                             self.thread, getattr(ti, "task_id", "?"), exc_info=True)
            return False

    def notify(self, context) -> None:
        self.record(context)
        if not self.to:
            self.log.warning("no alert addresses for %s; failure not mailed", self.thread)
            return
        from airflow.providers.smtp.hooks.smtp import SmtpHook

        subject, content = self.message(context)
        with SmtpHook(smtp_conn_id=self.smtp_conn_id) as smtp:
            smtp.send_email_smtp(
                to=self.to,
                subject=subject,
                html_content=content,
                from_email=self.from_email or smtp.from_email or "panelflow@localhost",
            )
