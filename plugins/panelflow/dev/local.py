"""``make run``: panelflow on one machine, supervised as one unit.

Starts (or reuses) an embedded PostgreSQL holding the Airflow metadata DB and the panel DB,
migrates both, loads the demo data once, syncs pools from the catalog, then runs the Airflow 3
components — scheduler, dag-processor, triggerer, API server (LocalExecutor) — plus a local SMTP
sink that keeps alert e-mails as files the card-payment gateway sandbox (BillingWork charges
through it), the registrar sandbox (DomainNameDataSyncThread) and the Microsoft sandbox (Graph,
Partner Center, Azure Retail Prices). Each child runs in its own process group; Ctrl-C or
SIGTERM stops every group (children of children included) and then PostgreSQL, so nothing is
left behind. A second run reuses ``.panelflow/``.

Environment: PANELFLOW_HOME (state, default ./.panelflow), PANELFLOW_API_PORT (8080),
PANELFLOW_PG_PORT (54329), PANELFLOW_SMTP_PORT (8025), PANELFLOW_GATEWAY_PORT (8765), PANELFLOW_REGISTRAR_PORT (8766), PANELFLOW_MICROSOFT_PORT (8767), PANELFLOW_DATABASE_URL (use this
PostgreSQL server instead of the embedded one: postgresql://user:password@host:port).
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

from panelflow.config import ROOT, render
from panelflow.dev.postgres import die_with_parent

COMPONENTS = {
    "scheduler": ["scheduler"],
    "dag-processor": ["dag-processor"],
    "triggerer": ["triggerer"],
    "api-server": ["api-server"],
}


GRAPH_TENANTS = 2  # the Microsoft sandbox's default --graph-tenants


class Supervisor:
    def __init__(self) -> None:
        self.home = Path(os.environ.get("PANELFLOW_HOME", ROOT / ".panelflow")).resolve()
        self.api_port = int(os.environ.get("PANELFLOW_API_PORT", "8080"))
        self.pg_port = int(os.environ.get("PANELFLOW_PG_PORT", "54329"))
        self.smtp_port = int(os.environ.get("PANELFLOW_SMTP_PORT", "8025"))
        self.gateway_port = int(os.environ.get("PANELFLOW_GATEWAY_PORT", "8765"))
        self.registrar_port = int(os.environ.get("PANELFLOW_REGISTRAR_PORT", "8766"))
        self.microsoft_port = int(os.environ.get("PANELFLOW_MICROSOFT_PORT", "8767"))
        self.airflow_home = self.home / "airflow"
        self.procs: dict[str, subprocess.Popen] = {}
        self.pg = None
        self.watchdog: subprocess.Popen | None = None
        self.stopping = False

    # -- set-up ---------------------------------------------------------------------------
    def _secrets(self) -> dict[str, str]:
        path = self.home / "secrets.json"
        values = json.loads(path.read_text()) if path.exists() else {}
        wanted = {"admin_password": 12, "jwt_secret": 32, "api_secret_key": 32, "gateway_api_key": 24,
                  "registrar_api_key": 24, "partner_center_secret": 24}
        if wanted.keys() - values.keys():  # a first start, or a set-up from before a secret existed
            values.update({k: secrets.token_urlsafe(n) for k, n in wanted.items() if k not in values})
            path.write_text(json.dumps(values))
            path.chmod(0o600)
        return values

    def _database_server(self) -> str:
        external = os.environ.get("PANELFLOW_DATABASE_URL")
        if external:
            return external.rstrip("/")
        from panelflow.dev.postgres import EmbeddedPostgres

        self.pg = EmbeddedPostgres(self.home / "pgdata", port=self.pg_port).start()
        return self.pg.uri("").rstrip("/")

    def environment(self, server: str, sec: dict[str, str]) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            AIRFLOW_HOME=str(self.airflow_home),
            PYTHONPATH=os.pathsep.join(p for p in (str(ROOT / "plugins"), env.get("PYTHONPATH")) if p),
            PANELFLOW_API_PORT=str(self.api_port),
            AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=server.replace("postgresql://", "postgresql+psycopg://", 1) + "/airflow",
            AIRFLOW__API_AUTH__JWT_SECRET=sec["jwt_secret"],
            AIRFLOW__API__SECRET_KEY=sec["api_secret_key"],
            AIRFLOW_CONN_PANEL_DB=server + "/panel",
            AIRFLOW_CONN_SMTP_DEFAULT=json.dumps({
                "conn_type": "smtp", "host": "127.0.0.1", "port": self.smtp_port,
                "extra": {"disable_ssl": True, "disable_tls": True, "from_email": "panelflow@localhost"},
            }),
            PANELFLOW_SANDBOX_GATEWAY_KEY=sec["gateway_api_key"],
            PANELFLOW_SANDBOX_REGISTRAR_KEY=sec["registrar_api_key"],
            PANELFLOW_SANDBOX_PARTNER_CENTER_SECRET=sec["partner_center_secret"],
            # Partner Center and Azure Retail Prices on the Microsoft sandbox (include/sandbox/microsoft.py)
            AIRFLOW_CONN_PARTNER_CENTER=json.dumps({
                "conn_type": "panelflow_partner_center", "host": "127.0.0.1", "port": self.microsoft_port,
                "schema": "http", "login": "panelflow-partner-center", "password": sec["partner_center_secret"],
                "extra": {"tenant_id": "sandbox-partner", "authority": f"http://127.0.0.1:{self.microsoft_port}",
                          "timeout": 10},
            }),
            **self._graph_tenant_connections(),
            AIRFLOW_CONN_AZURE_RETAIL_PRICES=json.dumps({
                "conn_type": "panelflow_azure_retail_prices", "host": "127.0.0.1", "port": self.microsoft_port,
                "schema": "http", "extra": {"currencies": ["USD", "GBP"], "timeout": 30},
            }),
            AIRFLOW_CONN_REGISTRAR=json.dumps({
                "conn_type": "panelflow_registrar", "host": "127.0.0.1", "port": self.registrar_port,
                "schema": "http", "password": sec["registrar_api_key"], "extra": {"timeout": 10},
            }),
            # the card gateway sandbox (include/sandbox/payment_gateway.py), with this set-up's own key
            AIRFLOW_CONN_PAYMENT_GATEWAY=json.dumps({
                "conn_type": "panelflow_payment_gateway", "host": "127.0.0.1", "port": self.gateway_port,
                "schema": "http", "password": sec["gateway_api_key"], "extra": {"timeout": 10},
            }),
        )
        return env

    def _graph_tenant_connections(self) -> dict[str, str]:
        """One ``msgraph`` connection per tenant the Microsoft sandbox generates (deterministic
        ids and sandbox-only app secrets), as ``AIRFLOW_CONN_M365_TENANT_<i>``."""
        if str(ROOT / "include") not in sys.path:
            sys.path.append(str(ROOT / "include"))
        from sandbox import microsoft
        graph = microsoft.load("microsoft_graph").GraphApi(microsoft.TokenIssuer(), tenants=GRAPH_TENANTS,
                                                             users_per_tenant=1, groups_per_tenant=1)
        url = f"http://127.0.0.1:{self.microsoft_port}"
        return {f"AIRFLOW_CONN_M365_TENANT_{i}": json.dumps(graph.connection(i, url)) for i in range(GRAPH_TENANTS)}

    def _write_cli_env(self, env: dict[str, str]) -> None:
        """``.panelflow/env.sh``: what the airflow CLI needs to reach this set-up (``make airflow``)."""
        keys = ("AIRFLOW_HOME", "PYTHONPATH", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__API_AUTH__JWT_SECRET",
                "AIRFLOW__API__SECRET_KEY", "AIRFLOW_CONN_PANEL_DB", "AIRFLOW_CONN_SMTP_DEFAULT",
                "AIRFLOW_CONN_PAYMENT_GATEWAY", "AIRFLOW_CONN_REGISTRAR", "AIRFLOW_CONN_PARTNER_CENTER",
                "AIRFLOW_CONN_AZURE_RETAIL_PRICES", *(f"AIRFLOW_CONN_M365_TENANT_{i}" for i in range(GRAPH_TENANTS)))
        path = self.home / "env.sh"
        path.write_text("".join(f"export {k}={shlex.quote(env[k])}\n" for k in keys))
        path.chmod(0o600)

    def _run(self, env, *args: str) -> None:
        print(f"panelflow: {' '.join(args)}", flush=True)
        subprocess.run(args, env=env, check=True, cwd=ROOT)

    def prepare(self) -> dict[str, str]:
        self.home.mkdir(parents=True, exist_ok=True)
        self.airflow_home.mkdir(parents=True, exist_ok=True)
        sec = self._secrets()
        server = self._database_server()
        import psycopg
        from psycopg import sql

        with psycopg.connect(server + "/postgres", autocommit=True) as conn:
            for db in ("airflow", "panel"):
                if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,)).fetchone():
                    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db)))
        env = self.environment(server, sec)
        self._write_cli_env(env)
        render(self.airflow_home, env)
        (self.airflow_home / "simple_auth_manager_passwords.json.generated").write_text(
            json.dumps({"admin": sec["admin_password"]}))
        py = sys.executable
        self._run(env, py, "-m", "airflow", "db", "migrate")
        self._run(env, py, "-m", "panelflow.db", "upgrade", server + "/panel")
        flag = self.home / "demo-loaded"
        if not flag.exists():
            ports = {"api": self.api_port, "smtp": self.smtp_port, "pg": urllib.parse.urlsplit(server).port or 5432, "gateway": self.gateway_port,
                     "registrar": self.registrar_port, "microsoft": self.microsoft_port}
            self._run(env, py, "-m", "panelflow.dev.demo", server + "/panel", "--customers", "200",
                      "--local-ports", ",".join(f"{k}={v}" for k, v in ports.items()),
                      "--graph-tenants", ",".join(json.loads(env[f"AIRFLOW_CONN_M365_TENANT_{i}"])["extra"]["tenant_id"]
                                                  for i in range(GRAPH_TENANTS)))
            flag.write_text("1")
        self._run(env, py, "-m", "panelflow.pools")
        self._run(env, py, "-m", "airflow", "dags", "reserialize")
        return env

    # -- processes ------------------------------------------------------------------------
    def start(self, env: dict[str, str]) -> None:
        logs = self.home / "logs"
        logs.mkdir(exist_ok=True)
        self.watchdog = subprocess.Popen([sys.executable, "-c", _WATCHDOG], stdin=subprocess.PIPE, text=True,
                                         start_new_session=True)
        commands = {name: [sys.executable, "-m", "airflow", *args] for name, args in COMPONENTS.items()}
        # aiosmtpd's Mailbox handler makes the Maildir (new/, cur/, tmp/) itself if the folder is absent
        commands["smtp-sink"] = [sys.executable, "-m", "aiosmtpd", "-n", "-l", f"127.0.0.1:{self.smtp_port}",
                                 "-c", "aiosmtpd.handlers.Mailbox", str(self.home / "mail")]
        commands["payment-gateway"] = [sys.executable, "-m", "sandbox.payment_gateway",
                                       "--host", "127.0.0.1", "--port", str(self.gateway_port)]
        commands["registrar"] = [sys.executable, "-m", "sandbox.registrar",
                                 "--host", "127.0.0.1", "--port", str(self.registrar_port)]
        commands["microsoft"] = [sys.executable, "-m", "sandbox.microsoft",
                                 "--host", "127.0.0.1", "--port", str(self.microsoft_port)]
        for name, cmd in commands.items():
            out = open(logs / f"{name}.log", "ab")
            cwd = ROOT / "include" if cmd[1:3] == ["-m", f"sandbox.{name.replace('-', '_')}"] else ROOT  # -m finds it there
            self.procs[name] = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                                start_new_session=True, preexec_fn=die_with_parent(signal.SIGTERM))
            self.watchdog.stdin.write(f"{self.procs[name].pid}\n")
            self.watchdog.stdin.flush()
        print(f"panelflow: started {', '.join(f'{n} ({p.pid})' for n, p in self.procs.items())}; "
              f"logs in {logs}", flush=True)

    def wait_healthy(self, timeout: float = 180) -> bool:
        url = f"http://127.0.0.1:{self.api_port}/api/v2/monitor/health"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.stopping:
            self.check_children()
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    health = json.load(r)
                if health.get("scheduler", {}).get("status") == "healthy":
                    return True
            except OSError:
                pass
            time.sleep(1)
        return False

    def check_children(self) -> None:
        for name, p in self.procs.items():
            if p.poll() is not None:
                raise RuntimeError(f"{name} exited with {p.returncode}; see {self.home / 'logs' / (name + '.log')}")

    def stop(self) -> None:
        """Hand the stop to the watchdog — the same staged stop it does if this process dies —
        and reap the children meanwhile, so a stopped group leader does not linger as a zombie."""
        import psutil

        self.stopping = True
        # everything started under us, seen now: a task's supervisor process may have left its
        # component's process group (and so the watchdog's reach); it must not outlive make run
        descendants = psutil.Process().children(recursive=True)
        if self.watchdog is not None:
            try:
                self.watchdog.stdin.close()
            except OSError:  # the watchdog is already gone
                pass
            while self.watchdog.poll() is None:
                for p in self.procs.values():
                    p.poll()
                time.sleep(0.2)
            self.watchdog = None
        for p in self.procs.values():
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                pass
        self.procs.clear()
        if self.pg is not None:
            self.pg.stop()
            self.pg = None
        descendants += psutil.Process().children(recursive=True)
        _, alive = psutil.wait_procs(descendants, timeout=10)
        for p in alive:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=5)


# Outlives the supervisor in a session of its own. The supervisor writes each component's
# process group to its stdin; when that pipe closes — Supervisor.stop, or the supervisor killed
# outright — it stops those groups in stages: SIGTERM, SIGTERM again (the scheduler's "signal
# again if you don't want to wait" for its LocalExecutor workers), then SIGKILL what is left.
_WATCHDOG = """
import os, signal, sys, time
groups = [int(line) for line in sys.stdin if line.strip()]
def alive(g, send=os.killpg):
    try:
        send(g, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False
for sig, grace in ((signal.SIGTERM, 10), (signal.SIGTERM, 10), (signal.SIGKILL, 5)):
    live = [g for g in groups if alive(g)]
    if not live:
        break
    for g in live:
        try:
            os.killpg(g, sig)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(alive(g) for g in live):
        if not any(alive(g, os.kill) for g in live):  # the leaders are gone: sweep what they left
            for g in live:
                try:
                    os.killpg(g, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            break
        time.sleep(0.2)
"""


def main() -> int:
    sup = Supervisor()

    def on_signal(signum, frame):
        if not sup.stopping:
            sup.stopping = True
            raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        env = sup.prepare()
        sup.start(env)
        if not sup.wait_healthy():
            if sup.stopping:
                return 0
            print("panelflow: Airflow did not become healthy; see the logs", file=sys.stderr)
            return 1
        password = sup._secrets()["admin_password"]
        print(
            f"\npanelflow is up: http://localhost:{sup.api_port}  (login: admin / {password})\n"
            f"  alert e-mails are kept in {sup.home / 'mail'}; Ctrl-C stops everything\n",
            flush=True,
        )
        while True:
            sup.check_children()
            time.sleep(1)
    except KeyboardInterrupt:
        print("\npanelflow: stopping …", flush=True)
        return 0
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        print(f"panelflow: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        sup.stop()
        print("panelflow: stopped", flush=True)


if __name__ == "__main__":
    sys.exit(main())
