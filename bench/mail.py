"""The outbox sender against a bare smtplib loop, same messages, same SMTP sink, one process.

baseline: ``smtplib.SMTP.send_message`` in a loop over one connection — the least any sender
          can do per message.
ours:     ``panelflow.mail.send_due`` on the same number of queued outbox rows in a real
          PostgreSQL: claim with SKIP LOCKED, mark sending, send, mark sent and log, per message.

The sink is aiosmtpd in its own process, discarding what it accepts. 100,000 recipients
(BENCH_SMALL=1: 2,000). Ends with ``mail: … ratio=R target=1.5``.
"""

from __future__ import annotations

import json
import os
import smtplib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "plugins"))
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="panelflow-bench-"))
N = 2_000 if os.environ.get("BENCH_SMALL") == "1" else 100_000
TARGET = 1.5

SINK = """
import asyncio, sys
from aiosmtpd.controller import Controller
class Discard:
    async def handle_DATA(self, server, session, envelope):
        return "250 OK"
c = Controller(Discard(), hostname="127.0.0.1", port=int(sys.argv[1]))
c.start()
print("ready", flush=True)
sys.stdin.read()
c.stop()
"""


def main() -> None:
    import pendulum
    import psycopg

    from panelflow.db import upgrade
    from panelflow.devdb import EmbeddedPostgres, free_port
    from panelflow.mail import SmtpSession, _build, send_due

    tmp = Path(tempfile.mkdtemp(prefix="panelflow-bench-mail-"))
    pg = EmbeddedPostgres(tmp / "pg", durable=os.environ.get("BENCH_NOFSYNC") != "1").start()  # durable, as in production
    port = free_port()
    sink = subprocess.Popen([sys.executable, "-c", SINK, str(port)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert sink.stdout.readline().strip() == "ready"
        pg.create_database("panel")
        url = pg.uri("panel")
        upgrade(url)
        os.environ["AIRFLOW_CONN_SMTP_DEFAULT"] = json.dumps({
            "conn_type": "smtp", "host": "127.0.0.1", "port": port,
            "extra": {"disable_ssl": True, "disable_tls": True, "from_email": "bench@panelflow.example"}})
        now = pendulum.datetime(2026, 11, 20, 9, tz="UTC")
        with psycopg.connect(url) as conn:
            # a campaign's worth of personalised messages, queued set-based
            conn.execute(
                "INSERT INTO email_outbox (dedupe_key, template, to_address, subject, body_text, body_html, not_before, message_id)"
                " SELECT 'bench:' || g, 'notification', 'user' || g || '@bench.example', 'Hello user ' || g,"
                " 'Hello user ' || g || E',\\n\\nyour monthly usage report is ready.\\n', '<p>Hello user ' || g || '</p>',"
                " %s, '<bench-' || g || '@panelflow>' FROM generate_series(1, %s) g", (now, N))
            conn.commit()
            rows = conn.execute("SELECT id, to_address, from_address, subject, body_text, body_html, headers, message_id"
                                " FROM email_outbox ORDER BY id").fetchall()
        keys = ("id", "to_address", "from_address", "subject", "body_text", "body_html", "headers", "message_id")
        messages = [dict(zip(keys, r)) for r in rows]

        import airflow.providers.smtp.hooks.smtp  # noqa: F401  (a one-off import, not a per-message cost)

        t = time.perf_counter()
        with smtplib.SMTP("127.0.0.1", port) as smtp:
            for m in messages:
                smtp.send_message(_build(m, "bench@panelflow.example"))
        baseline = time.perf_counter() - t

        with psycopg.connect(url) as conn:
            t = time.perf_counter()
            summary = send_due(conn, as_of=now, claimer="bench", batch=500, max_messages=N, session=SmtpSession())
            ours = time.perf_counter() - t
        assert summary["sent"] == N, summary
    finally:
        sink.stdin.close()
        sink.wait(10)
        pg.stop()

    print(f"messages: {N:,}")
    print(f"baseline (bare smtplib loop, one connection): {baseline:.2f} s  {N / baseline:,.0f} msg/s")
    print(f"ours (outbox → SMTP, state per message):      {ours:.2f} s  {N / ours:,.0f} msg/s")
    print(f"mail: n={N} baseline={N / baseline:.0f}msg/s ours={N / ours:.0f}msg/s ratio={ours / baseline:.2f} target={TARGET}")


if __name__ == "__main__":
    main()
