"""``make run``: panelflow on one machine, supervised as one unit.

Starts (or reuses) an embedded PostgreSQL holding the Airflow metadata DB and the panel DB, then
the Airflow 3 components — scheduler, dag-processor, triggerer, API server (LocalExecutor) — plus
a local SMTP sink that keeps alert e-mails as files, the card-payment gateway sandbox (BillingWork
charges through it), the EPP registry sandbox (DomainNameDataSyncThread, ProvisioningWork 36), the
Microsoft sandbox (Graph, Partner Center, Azure Retail Prices), the Dataverse sandbox (a Dynamics
CRM organisation for SyncFromBackendWork and GroupActionWorkCRM), the BlackBerry UEM sandbox
(BBSyncWork) and the Ingram Micro sandbox (IngramCancelNoticesWork).

Start order is what each needs, because on 2 cores every process importing Airflow at once is
what a start costs: the servers that need nothing start first; ``panelflow.dev.prepare`` (one
process) migrates both databases (nothing to do on a restart), loads the demo data once and
syncs pools; scheduler, triggerer and API server start as soon as the metadata DB is ready, the
dag-processor once the panel DB is. A component that exits is restarted with back-off and a crash
loop stops everything (``panelflow.dev.supervise``). Each child runs in its own process group,
which a watchdog stops when make run stops or dies; Ctrl-C or SIGTERM stops every group
(children of children included) and then PostgreSQL, so nothing is left behind. A second run
reuses ``.panelflow/``. Children run without PYTHONDONTWRITEBYTECODE: byte-code caches, as in any
deployment, instead of compiling Airflow from source at every start.

Environment: PANELFLOW_HOME (state, default ./.panelflow), PANELFLOW_API_PORT (8080),
PANELFLOW_PG_PORT (54329), PANELFLOW_SMTP_PORT (8025), PANELFLOW_GATEWAY_PORT (8765),
PANELFLOW_REGISTRAR_PORT (8766), PANELFLOW_MICROSOFT_PORT (8767), PANELFLOW_DATAVERSE_PORT (8768),
PANELFLOW_BLACKBERRY_PORT (8783), PANELFLOW_INGRAM_PORT (8782), PANELFLOW_DATABASE_URL (use this PostgreSQL server instead of the
embedded one: postgresql://user:password@host:port).
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import psutil

from panelflow.config import ROOT, render
from panelflow.dev.postgres import die_with_parent
from panelflow.dev.prepare import READY
from panelflow.dev.supervise import Supervision, describe_exit, kill_leftovers

SERVERS = ("smtp-sink", "payment-gateway", "registrar", "microsoft", "dataverse", "blackberry-uem",
           "ingram")  # need nothing: started first
COMPONENTS = {
    "scheduler": ["scheduler"],
    "dag-processor": ["dag-processor"],
    "triggerer": ["triggerer"],
    "api-server": ["api-server"],
}


GRAPH_TENANTS = 2  # the Microsoft sandbox's default --graph-tenants
# the Dataverse sandbox's defaults (include/sandbox/dataverse.py): one organisation in one tenant
CRM_ORG, CRM_TENANT, CRM_CLIENT = "demo", "demo-tenant", "panelflow-crm"
UEM_TENANT, UEM_USER = "S12345678", "panelflow-api"   # the BlackBerry UEM sandbox's tenant and API user
INGRAM_CLIENT, INGRAM_CUSTOMER = "panelflow-ingram", "20-222222"   # the Ingram sandbox's API client, reseller


class Supervisor:
    def __init__(self) -> None:
        self.home = Path(os.environ.get("PANELFLOW_HOME", ROOT / ".panelflow")).resolve()
        self.api_port = int(os.environ.get("PANELFLOW_API_PORT", "8080"))
        self.pg_port = int(os.environ.get("PANELFLOW_PG_PORT", "54329"))
        self.smtp_port = int(os.environ.get("PANELFLOW_SMTP_PORT", "8025"))
        self.gateway_port = int(os.environ.get("PANELFLOW_GATEWAY_PORT", "8765"))
        self.registrar_port = int(os.environ.get("PANELFLOW_REGISTRAR_PORT", "8766"))
        self.microsoft_port = int(os.environ.get("PANELFLOW_MICROSOFT_PORT", "8767"))
        self.dataverse_port = int(os.environ.get("PANELFLOW_DATAVERSE_PORT", "8768"))
        self.blackberry_port = int(os.environ.get("PANELFLOW_BLACKBERRY_PORT", "8783"))
        self.ingram_port = int(os.environ.get("PANELFLOW_INGRAM_PORT", "8782"))
        self.airflow_home = self.home / "airflow"
        self.pg = None
        self.sup: Supervision | None = None
        self.preparing: subprocess.Popen | None = None
        self.metadata_ready = threading.Event()
        self.stopping = False

    # -- set-up ---------------------------------------------------------------------------
    def _secrets(self) -> dict[str, str]:
        path = self.home / "secrets.json"
        values = json.loads(path.read_text()) if path.exists() else {}
        wanted = {"admin_password": 12, "jwt_secret": 32, "api_secret_key": 32, "gateway_api_key": 24,
                  "registrar_password": 12,  # 12 bytes: 16 characters, EPP's maximum
                  "partner_center_secret": 24, "dataverse_secret": 24, "blackberry_password": 18,
                  "ingram_secret": 24}
        if wanted.keys() - values.keys():  # a first start, or a set-up from before a secret existed
            values.update({k: secrets.token_urlsafe(n) for k, n in wanted.items() if k not in values})
            path.write_text(json.dumps(values))
            path.chmod(0o600)
        return values

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
            PANELFLOW_SANDBOX_REGISTRAR_PASSWORD=sec["registrar_password"],
            PANELFLOW_SANDBOX_PARTNER_CENTER_SECRET=sec["partner_center_secret"],
            PANELFLOW_SANDBOX_DATAVERSE_SECRET=sec["dataverse_secret"],
            PANELFLOW_SANDBOX_BLACKBERRY_PASSWORD=sec["blackberry_password"],
            PANELFLOW_SANDBOX_INGRAM_SECRET=sec["ingram_secret"],
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
            # the EPP registry sandbox (include/sandbox/registrar.py): TLS verified against its own CA
            AIRFLOW_CONN_REGISTRAR=json.dumps({
                "conn_type": "panelflow_epp", "host": "127.0.0.1", "port": self.registrar_port,
                "login": "panelflow-sandbox", "password": sec["registrar_password"],
                "extra": {"ca_file": str(self.home / "registrar-tls" / "ca.pem"), "read_timeout": 30},
            }),
            # the Dataverse sandbox (include/sandbox/dataverse.py): Entra ID sign-in on the sandbox itself;
            # the organisation's URL is its crm_organizations row's (panelflow.dev.demo)
            AIRFLOW_CONN_DYNAMICS=json.dumps({
                "conn_type": "panelflow_dynamics", "login": CRM_CLIENT, "password": sec["dataverse_secret"],
                "extra": {"tenant_id": CRM_TENANT, "authority": f"http://127.0.0.1:{self.dataverse_port}",
                          "timeout": 10},
            }),
            # the BlackBerry UEM sandbox (include/sandbox/blackberry_uem.py), named by bb_uem_servers
            AIRFLOW_CONN_BLACKBERRY_UEM=json.dumps({
                "conn_type": "panelflow_blackberry_uem", "host": f"http://127.0.0.1:{self.blackberry_port}",
                "login": UEM_USER, "password": sec["blackberry_password"],
                "extra": {"tenant_guid": UEM_TENANT, "timeout": 10},
            }),
            # the Ingram Micro sandbox (include/sandbox/ingram.py): the reseller account of ingram_subscriptions
            AIRFLOW_CONN_INGRAM=json.dumps({
                "conn_type": "panelflow_ingram", "host": f"http://127.0.0.1:{self.ingram_port}",
                "login": INGRAM_CLIENT, "password": sec["ingram_secret"],
                "extra": {"customer_number": INGRAM_CUSTOMER, "country_code": "US", "timeout": 10},
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
                "AIRFLOW_CONN_AZURE_RETAIL_PRICES", "AIRFLOW_CONN_DYNAMICS", "AIRFLOW_CONN_BLACKBERRY_UEM",
                "AIRFLOW_CONN_INGRAM",
                *(f"AIRFLOW_CONN_M365_TENANT_{i}" for i in range(GRAPH_TENANTS)))
        path = self.home / "env.sh"
        path.write_text("".join(f"export {k}={shlex.quote(env[k])}\n" for k in keys))
        path.chmod(0o600)

    def _database_server(self) -> str:
        """The server URL; the embedded server is only described here (same port and data
        directory at every start and restart) and started by ``begin``."""
        external = os.environ.get("PANELFLOW_DATABASE_URL")
        if external:
            return external.rstrip("/")
        from panelflow.dev.postgres import EmbeddedPostgres

        self.pg = EmbeddedPostgres(self.home / "pgdata", port=self.pg_port)
        return self.pg.uri("").rstrip("/")

    def _popen(self, name: str, cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
        out = open(self.home / "logs" / f"{name}.log", "ab")
        cwd = ROOT / "include" if cmd[1:3] == ["-m", f"sandbox.{name.replace('-', '_')}"] else ROOT  # -m finds it there
        try:
            return subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True, preexec_fn=die_with_parent(signal.SIGTERM))
        finally:
            out.close()

    def _add(self, names, env: dict[str, str]) -> None:
        commands = self.commands()
        for name in names:
            self.sup.add(name, lambda name=name: self._popen(name, commands[name], env))
        print(f"panelflow: started {', '.join(f'{n} ({self.sup.children[n].proc.pid})' for n in names)}", flush=True)

    def commands(self) -> dict[str, list[str]]:
        py = sys.executable
        commands = {name: [py, "-m", "airflow", *args] for name, args in COMPONENTS.items()}
        # aiosmtpd's Mailbox handler makes the Maildir (new/, cur/, tmp/) itself if the folder is absent
        commands["smtp-sink"] = [py, "-m", "aiosmtpd", "-n", "-l", f"127.0.0.1:{self.smtp_port}",
                                 "-c", "aiosmtpd.handlers.Mailbox", str(self.home / "mail")]
        for name, port in (("payment-gateway", self.gateway_port), ("registrar", self.registrar_port),
                           ("microsoft", self.microsoft_port), ("dataverse", self.dataverse_port),
                           ("blackberry-uem", self.blackberry_port), ("ingram", self.ingram_port)):
            commands[name] = [py, "-m", f"sandbox.{name.replace('-', '_')}", "--host", "127.0.0.1", "--port", str(port)]
        commands["payment-gateway"] += ["--state", str(self.home / "stripe-sandbox.json")]  # Stripe keeps what it was given
        commands["registrar"] += ["--tls-dir", str(self.home / "registrar-tls")]  # the CA its connection trusts
        commands["dataverse"] += ["--org", CRM_ORG, "--tenant", CRM_TENANT, "--client-id", CRM_CLIENT]
        commands["blackberry-uem"] += ["--tenant", UEM_TENANT, "--username", UEM_USER]
        commands["ingram"] += ["--client-id", INGRAM_CLIENT, "--customer-number", INGRAM_CUSTOMER]
        return commands

    # -- start ----------------------------------------------------------------------------
    def begin(self) -> dict[str, str]:
        """Everything that needs no database, then PostgreSQL and the DB preparation (in the
        background): the servers without dependencies start while the databases are prepared."""
        self.home.mkdir(parents=True, exist_ok=True)
        self.airflow_home.mkdir(parents=True, exist_ok=True)
        (self.home / "logs").mkdir(exist_ok=True)
        sec = self._secrets()
        server = self._database_server()
        env = self.environment(server, sec)
        # byte-code caches, as any deployment has: with PYTHONDONTWRITEBYTECODE (set in this
        # shell) every component compiled Airflow from source at every start
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        self._write_cli_env(env)
        render(self.airflow_home, env)
        (self.airflow_home / "simple_auth_manager_passwords.json.generated").write_text(
            json.dumps({"admin": sec["admin_password"]}))
        self.sup = Supervision(log=lambda line: print(line, flush=True))
        self._add(SERVERS, env)
        if self.pg is not None:
            self.sup.add("postgres", lambda: self.pg.start().proc, own_group=False)
        import psycopg
        from psycopg import sql

        with psycopg.connect(server + "/postgres", autocommit=True) as conn:
            for db in ("airflow", "panel"):
                if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,)).fetchone():
                    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db)))
        ports = {"api": self.api_port, "smtp": self.smtp_port, "pg": urllib.parse.urlsplit(server).port or 5432,
                 "gateway": self.gateway_port, "registrar": self.registrar_port, "microsoft": self.microsoft_port,
                 "dataverse": self.dataverse_port, "blackberry": self.blackberry_port, "ingram": self.ingram_port}
        self.preparing = subprocess.Popen(
            [sys.executable, "-m", "panelflow.dev.prepare"], cwd=ROOT, text=True, start_new_session=True,
            env={**env, "PANELFLOW_HOME": str(self.home),
                 "PANELFLOW_DEMO_PORTS": ",".join(f"{k}={v}" for k, v in ports.items())},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, preexec_fn=die_with_parent(signal.SIGTERM))
        self.sup.watch(self.preparing)
        threading.Thread(target=self._relay, args=(self.preparing.stdout,), daemon=True).start()
        return env

    def _relay(self, stream) -> None:
        """The preparation's output to ours; its READY line lets the components start."""
        for line in stream:
            print(line, end="", flush=True)
            if line.startswith(READY):
                self.metadata_ready.set()

    def step(self, env: dict[str, str]) -> None:
        """One turn of the start-up and supervision loop: start what has become startable."""
        self.sup.poll()
        if self.metadata_ready.is_set() and "scheduler" not in self.sup.children:
            self._add(("scheduler", "triggerer", "api-server"), env)
        if self.preparing is not None and self.preparing.poll() is not None:
            if self.preparing.returncode != 0:
                raise RuntimeError(f"preparing the databases failed ({describe_exit(self.preparing.returncode)}); "
                                   "see the lines above")
            self.preparing = None
            self.metadata_ready.set()
            if "scheduler" not in self.sup.children:
                self._add(("scheduler", "triggerer", "api-server"), env)
            self._add(("dag-processor",), env)  # it parses the DAGs, whose steps need the panel DB ready

    def healthy(self) -> bool:
        url = f"http://127.0.0.1:{self.api_port}/api/v2/monitor/health"
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return json.load(r).get("scheduler", {}).get("status") == "healthy"
        except (OSError, ValueError):
            return False

    def dags_loaded(self, env: dict[str, str]) -> bool:
        """The dag-processor's first parse is visible in the API (the threads, or the file's
        import error): what the UI shows. ``airflow dags reserialize`` used to do this parse
        beforehand, at the cost of one more process importing Airflow."""
        base = f"http://127.0.0.1:{self.api_port}"

        def call(path: str, body=None, token=None):
            req = urllib.request.Request(base + path, data=json.dumps(body).encode() if body else None,
                                         headers={"Content-Type": "application/json"})
            if token:
                req.add_header("Authorization", f"Bearer {token}")
            with urllib.request.urlopen(req, timeout=5) as r:
                return json.load(r)

        try:
            token = call("/auth/token", {"username": "admin", "password": self._secrets()["admin_password"]})
            token = token["access_token"]
            return bool(call("/api/v2/dags?limit=1", token=token)["total_entries"]
                        or call("/api/v2/importErrors?limit=1", token=token)["total_entries"])
        except (OSError, ValueError, KeyError):
            return False

    def wait_up(self, env: dict[str, str], timeout: float = 300) -> bool:
        born = psutil.Process().create_time()
        deadline = time.monotonic() + timeout
        healthy_after = None
        while time.monotonic() < deadline and not self.stopping:
            self.step(env)
            if healthy_after is None and "dag-processor" in self.sup.children and self.healthy():
                healthy_after = time.time() - born
            if healthy_after is not None and self.dags_loaded(env):
                print(f"panelflow: API healthy {healthy_after:.1f} s after start, DAGs stored after "
                      f"{time.time() - born:.1f} s; logs in {self.home / 'logs'}", flush=True)
                return True
            time.sleep(0.5)
        return False

    def stop(self) -> None:
        """Hand the stop to the watchdog — the same staged stop it does if this process dies —
        then stop PostgreSQL and anything started under us that left its group."""
        self.stopping = True
        # everything started under us, seen now: a task's supervisor process may have left its
        # component's process group (and so the watchdog's reach); it must not outlive make run
        descendants = psutil.Process().children(recursive=True)
        if self.sup is not None:
            self.sup.close_watchdog(reap=lambda: self.preparing is not None and self.preparing.poll())
            for child in self.sup.children.values():
                if child.proc is not None and child.own_group:
                    try:
                        child.proc.wait(5)
                    except subprocess.TimeoutExpired:
                        pass
        if self.pg is not None:
            self.pg.stop()
        descendants += psutil.Process().children(recursive=True)
        kill_leftovers(descendants)


def main() -> int:
    sup = Supervisor()

    def on_signal(signum, frame):
        if not sup.stopping:
            sup.stopping = True
            raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        env = sup.begin()
        if not sup.wait_up(env):
            if sup.stopping:
                return 0
            print("panelflow: Airflow did not become healthy; see the logs", file=sys.stderr)
            return 1
        password = sup._secrets()["admin_password"]
        print(
            f"\npanelflow is up: http://localhost:{sup.api_port}  (login: admin / {password})\n"
            f"  alert e-mails are kept in {sup.home / 'mail'}; Ctrl-C stops everything\n"
            + (f"  threads started unpaused on first start: {os.environ['PANELFLOW_THREADS']} (PANELFLOW_THREADS)\n"
               if os.environ.get("PANELFLOW_THREADS") else ""),
            flush=True,
        )
        while True:
            sup.step(env)
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("\npanelflow: stopping …", flush=True)
        return 0
    except (RuntimeError, subprocess.CalledProcessError) as exc:  # CrashLoop included
        print(f"panelflow: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        sup.stop()
        print("panelflow: stopped", flush=True)


if __name__ == "__main__":
    sys.exit(main())
