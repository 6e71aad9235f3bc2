"""Scale-out for real: the CeleryExecutor with Debian's ``redis-server`` as the broker on
loopback and two Celery workers started as docker-compose.yaml starts them (each consuming the
queues its compose service names). A thread whose node is ``remoting`` runs every task — guard,
step, release — on the worker consuming ``remoting``, and a ``master`` thread on the other.

Which worker ran a task is read from the task instance: each worker names itself through
``[core] hostname_callable`` (both run on this one machine), and the worker's own log lists
the task keys it received. ``docker compose config`` validates the compose file where the docker
client has the compose plugin (no Docker engine is needed for that).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from harness import require_binary
from harness.airflow_cluster import ROOT, AirflowCluster, free_port, write_catalog


def compose_worker_queues() -> dict[str, str]:
    """node → the ``--queues`` argument of its worker service in docker-compose.yaml."""
    services = yaml.safe_load((ROOT / "docker-compose.yaml").read_text())["services"]
    return {name.removeprefix("worker-"): svc["command"].split("--queues", 1)[1].split()[0].strip('"')
            for name, svc in services.items() if name.startswith("worker-")}


def _probe(name: str, node: str, group: str) -> str:
    return f"""
    - name: {name}
      description: Runs one panel-DB step on the {node} node.
      domain: housekeeping
      schedule: {{kind: manual}}
      run_groups: [{group}]
      nodes: [{node}]
      steps:
        - id: expire_sessions
          number: "1"
          seed: Update session data (expiry).
          run: panelflow.steps.sessions.expire_sessions
    """


@pytest.fixture(scope="module")
def celery_cluster(postgres, migrated_panel_db):
    redis_server = require_binary("redis-server")
    home = Path(tempfile.mkdtemp(prefix="panelflow-celery-"))
    redis_port = free_port()
    redis = subprocess.Popen([redis_server, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no", "--dir", str(home), "--protected-mode", "yes"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    catalog = write_catalog(home / "catalog", nodes={"master": "control server", "remoting": "Windows backends"},
                            run_groups={"master_probe": 1, "remoting_probe": 1},
                            threads=_probe("RemotingProbeWork", "remoting", "remoting_probe")
                            + _probe("MasterProbeWork", "master", "master_probe"))
    cluster = AirflowCluster(home, postgres, catalog, migrated_panel_db, name="airflow_celery_cluster",
                             executor="CeleryExecutor",
                             env={"AIRFLOW__CELERY__BROKER_URL": f"redis://127.0.0.1:{redis_port}/0",
                                  "AIRFLOW__CELERY__RESULT_BACKEND": f"redis://127.0.0.1:{redis_port}/1",
                                  "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.5"})
    try:
        started = time.monotonic()
        # the triggerer runs each thread's run-group guard (it starts there, never on a worker)
        cluster.start(components=("scheduler", "triggerer", "api-server"),
                      dag_ids=("remoting_probe_work", "master_probe_work"))
        queues = compose_worker_queues()
        for node in ("master", "remoting"):  # as docker-compose.yaml runs them, one per node
            cluster.spawn(f"worker-{node}", [sys.executable, "-m", "airflow", "celery", "worker", "--queues",
                                             queues[node], "--concurrency", "1", "--celery-hostname", f"{node}@%h",
                                             "--without-gossip", "--without-mingle"],
                          env={"PANELFLOW_TEST_WORKER_NAME": f"worker-{node}",
                               "AIRFLOW__CORE__HOSTNAME_CALLABLE": "harness.airflow_cluster.worker_hostname",
                               "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port())})
        cluster.api.wait_for(lambda: all("ready" in cluster.log(f"worker-{n}") for n in ("master", "remoting")),
                             60, "the Celery workers ready")
        cluster.started_in = time.monotonic() - started
        cluster.unpause("remoting_probe_work", "master_probe_work")
        yield cluster
    finally:
        cluster.stop()
        redis.terminate()
        redis.wait(10)
        # this cluster has no dag-processor, so no run-group release callback ran: its leases go with it
        import psycopg

        with psycopg.connect(migrated_panel_db, autocommit=True) as conn:
            conn.execute("DELETE FROM run_group_leases WHERE dag_id IN ('remoting_probe_work', 'master_probe_work')")
        if os.environ.get("PANELFLOW_KEEP_TEST_CLUSTER"):
            print(f"cluster kept in {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)


def test_each_thread_runs_on_the_worker_of_its_node(celery_cluster):
    api = celery_cluster.api
    runs = {dag: api.trigger(dag) for dag in ("remoting_probe_work", "master_probe_work")}
    for dag, run in runs.items():
        assert api.wait_runs(dag, [run], timeout=120) == {run: "success"}, celery_cluster.log("scheduler")[-3000:]
    placed = {dag: {ti["task_id"]: (ti["queue"], ti["hostname"], ti["state"]) for ti in api.task_instances(dag, run)}
              for dag, run in runs.items()}
    print(f"\nAirflow + 2 Celery workers up in {celery_cluster.started_in:.1f} s; {placed}")
    for dag, node in (("remoting_probe_work", "remoting"), ("master_probe_work", "master")):
        assert set(placed[dag]) == {"run_group_guard", "expire_sessions"}
        assert placed[dag]["expire_sessions"] == (node, f"worker-{node}", "success")
        _, guard_host, guard_state = placed[dag]["run_group_guard"]  # ended in the triggerer, on no worker
        assert guard_state == "success" and not (guard_host or "").startswith("worker-")
    # and each worker's own log shows it received its own node's one step and nothing else
    for worker, mine, other in (("worker-remoting", "remoting_probe_work", "master_probe_work"),
                                ("worker-master", "master_probe_work", "remoting_probe_work")):
        received = [line for line in celery_cluster.log(worker).splitlines() if "Executing workload in Celery" in line]
        assert len(received) == 1 and all(f"dag_id={mine}/" in line for line in received), (worker, received)
        assert other not in celery_cluster.log(worker)


def test_compose_file_is_valid_for_docker_compose():
    """``docker compose config`` parses and interpolates the file (no engine needed). Skipped
    only where the docker client has no compose plugin: it is a client check, not a server."""
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "compose", "version"], capture_output=True).returncode:
        pytest.skip("the docker client's compose plugin is not installed")
    env = {**os.environ, "POSTGRES_PASSWORD": "x", "AIRFLOW_JWT_SECRET": "x", "AIRFLOW_API_SECRET_KEY": "x",
           "PANEL_DB_URL": "postgresql://panel@postgres/panel"}
    out = subprocess.run([docker, "compose", "-f", str(ROOT / "docker-compose.yaml"), "config", "--quiet"],
                         capture_output=True, text=True, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stderr
