"""Failure alerts: one e-mail to the thread's owners when a step fails for good.

A task-level ``on_failure_callback`` (it runs in the worker after the last try), so the mail
can name the step, the try and the error. Sent through the Airflow SMTP connection
``smtp_default`` by the SMTP provider's hook: the server and its credentials live in the
connection, never here.
"""

from __future__ import annotations

import html
import traceback

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

    def notify(self, context) -> None:
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
