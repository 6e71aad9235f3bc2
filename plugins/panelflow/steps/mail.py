"""SendEmailNotificationsWork: the outbox sender."""

from __future__ import annotations

import os
import socket

from panelflow.mail import send_due


def send_due_emails(panel_db, interval) -> dict:
    """Process notifications and send due emails: every outbox message due at the run's clock."""
    claimer = f"{socket.gethostname()}:{os.getpid()}"
    with panel_db.get_conn() as conn:
        return send_due(conn, as_of=interval.end, claimer=claimer)
