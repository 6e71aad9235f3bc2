"""A campaign through panelflow's mail path against a bare smtplib loop, one process, one sink.

ours:     SendEmailCampaignWork's step on a campaign of N recipients in a real (durable)
          PostgreSQL: personalise each message (Jinja sandbox), queue it in the outbox, then
          send with per-message state (claim, sending, sent + log) — run after run until the
          campaign is done, as the scheduler would.
baseline: the same N rendered messages sent by ``smtplib.SMTP.send_message`` in a loop over
          one connection — the least any sender can do per message.

The sink is aiosmtpd in its own process, discarding what it accepts. N = 100,000
(BENCH_SMALL=1: 2,000). Ends with ``mail: … ratio=R target=1.5`` (R = ours / baseline time).
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
import sys
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

    import airflow.providers.smtp.hooks.smtp  # noqa: F401  (one-off imports, not a per-message cost)
    from panelflow.db import upgrade
    from panelflow.dev.postgres import EmbeddedPostgres, free_port
    from panelflow.hooks.panel_db import PanelDatabaseHook
    from panelflow.services.outbox import _build
    from panelflow.step import Interval
    from panelflow.steps.mail import process_email_campaigns

    tmp = Path(tempfile.mkdtemp(prefix="panelflow-bench-mail-"))
    pg = EmbeddedPostgres(tmp / "pg").start()  # durable (fsync on), as in production
    port = free_port()
    sink = subprocess.Popen([sys.executable, "-c", SINK, str(port)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    try:
        assert sink.stdout.readline().strip() == "ready"
        pg.create_database("panel")
        url = pg.uri("panel")
        upgrade(url)
        os.environ["AIRFLOW_CONN_PANEL_DB"] = url
        os.environ["AIRFLOW_CONN_SMTP_DEFAULT"] = json.dumps({
            "conn_type": "smtp", "host": "127.0.0.1", "port": port,
            "extra": {"disable_ssl": True, "disable_tls": True, "from_email": "news@panelflow.example"}})
        now = pendulum.datetime(2026, 11, 20, 9, tz="UTC")
        with psycopg.connect(url) as conn:
            (cid,) = conn.execute(
                "INSERT INTO email_campaigns (name, subject_template, text_template, html_template, context, send_at)"
                " VALUES ('bench', '{{ name }}, your {{ plan }} plan: {{ offer }}',"
                " 'Dear {{ name }},\\n\\nyour {{ plan }} plan gets {{ offer }} this month.\\n',"
                " '<p>Dear {{ name }},</p><p>your {{ plan }} plan gets {{ offer }} this month.</p>', %s, %s)"
                " RETURNING id", (json.dumps({"offer": "20% off"}), now)).fetchone()
            conn.execute(
                "INSERT INTO email_campaign_recipients (campaign_id, email, name, data) SELECT %s,"
                " 'user' || g || '@bench.example', 'User ' || g, jsonb_build_object('plan', (ARRAY['Gold', 'Silver'])[1 + g %% 2])"
                " FROM generate_series(1, %s) g", (cid, N))
            conn.commit()

        hook = PanelDatabaseHook()
        t = time.perf_counter()
        runs = 0
        while True:
            runs += 1
            summary = process_email_campaigns(hook, Interval(now, now))
            if summary["finished"] or runs > 100:
                break
        ours = time.perf_counter() - t
        with psycopg.connect(url) as conn:
            (sent,) = conn.execute("SELECT count(*) FROM email_outbox WHERE status = 'sent'").fetchone()
            assert sent == N, (sent, summary)
            keys = ("id", "to_address", "from_address", "subject", "body_text", "body_html", "headers", "message_id")
            messages = [dict(zip(keys, r)) for r in conn.execute(
                "SELECT " + ", ".join(keys) + " FROM email_outbox ORDER BY id").fetchall()]

        t = time.perf_counter()
        with smtplib.SMTP("127.0.0.1", port) as smtp:
            for m in messages:
                smtp.send_message(_build(m, "news@panelflow.example"))
        baseline = time.perf_counter() - t
    finally:
        sink.stdin.close()
        sink.wait(10)
        pg.stop()

    print(f"recipients: {N:,} ({runs} campaign runs)")
    print(f"baseline (bare smtplib loop, one connection): {baseline:.2f} s  {N / baseline:,.0f} msg/s")
    print(f"ours (personalise, outbox, send with state):  {ours:.2f} s  {N / ours:,.0f} msg/s")
    print(f"mail: n={N} baseline={N / baseline:.0f}msg/s ours={N / ours:.0f}msg/s ratio={ours / baseline:.2f} "
          f"target={TARGET}")


if __name__ == "__main__":
    main()
