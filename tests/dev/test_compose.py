"""docker-compose.yaml (no Docker engine runs here): the services the catalog needs are there,
sign-in is the FAB auth manager with users from the environment, and no secret is in the file."""

import json
import os
import re
import shutil
import subprocess

import pytest
import yaml

from panelflow.catalog import load_catalog

from harness import ROOT


def test_compose_has_the_components_and_a_worker_per_node():
    compose = yaml.safe_load((ROOT / "docker-compose.yaml").read_text())
    services = compose["services"]
    for name in ("postgres", "redis", "init", "scheduler", "dag-processor", "triggerer", "api-server"):
        assert name in services, name
    catalog = load_catalog()
    workers = {n: s for n, s in services.items() if n.startswith("worker-")}
    assert set(workers) == {f"worker-{node}" for node in catalog.nodes}
    queues_used = {catalog.queue(t, s) for t in catalog.live_threads for s in t.steps}
    consumed = set()
    for node, svc in ((n.removeprefix("worker-"), s) for n, s in workers.items()):
        queues = svc["command"].split("--queues", 1)[1].split()[0].strip('"').split(",")
        assert node in queues
        consumed |= set(queues)
    assert queues_used <= consumed  # every task queue has a worker
    for name, svc in services.items():
        if name not in ("postgres", "redis"):
            assert svc["build"] == "." and svc["environment"]["PANELFLOW_EXECUTOR"] == "CeleryExecutor"


FAB = "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager"
ROLES = ("ADMIN", "OPERATOR", "VIEWER")


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yaml").read_text())


def test_every_airflow_service_signs_in_with_fab_and_init_creates_the_users():
    services = _compose()["services"]
    airflow = {n: s for n, s in services.items() if n not in ("postgres", "redis")}
    for name, svc in airflow.items():
        env = svc["environment"]
        assert env.get("AIRFLOW__CORE__AUTH_MANAGER") == FAB, name
        assert not any("SIMPLE_AUTH_MANAGER" in k for k in env), name
        assert not any(k.startswith("PANELFLOW_") and k.endswith("_PASSWORD") for k in env) or name == "init", \
            f"{name} gets a sign-in password it does not need"
    init = airflow["init"]
    # the roles and users come after the metadata DB (FAB's tables) exists, from the environment
    steps = [s.strip() for s in init["command"].removeprefix("bash -c").strip().strip('"').split("&&")]
    assert steps.index("python -m panelflow.auth_roles") > steps.index("airflow db migrate")
    for role in ROLES:
        for field in ("USERNAME", "PASSWORD", "EMAIL"):
            value = init["environment"][f"PANELFLOW_{role}_{field}"]
            assert re.fullmatch(rf"\$\{{PANELFLOW_{role}_{field}(:[-?][^}}]*)?}}", value), (role, field, value)
    for name, svc in airflow.items():
        if name != "init":
            assert svc["depends_on"]["init"] == {"condition": "service_completed_successfully"}, name


def test_no_secret_and_no_simple_auth_manager_in_the_file():
    text = (ROOT / "docker-compose.yaml").read_text()
    assert "simple_auth_manager" not in text.lower() and "SimpleAuthManager" not in text
    secretish = re.compile(r"(password|secret|_key|token)", re.I)

    def check(where: str, value) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                check(f"{where}.{k}", v)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                check(f"{where}[{i}]", v)
        elif isinstance(value, str) and secretish.search(where.rsplit(".", 1)[-1]):
            # a secret's value is only ever a reference to the environment
            assert re.fullmatch(r"\$\{[A-Z0-9_]+(:[-?][^}]*)?}", value), (where, value)
        elif isinstance(value, str) and "://" in value:
            # a URL's credentials are references too (user:${POSTGRES_PASSWORD}@host)
            userinfo = value.split("://", 1)[1].split("@", 1)
            if len(userinfo) == 2 and ":" in userinfo[0]:
                assert re.search(r":\$\{[A-Z0-9_]+[^}]*}$", userinfo[0]), (where, value)

    check("compose", _compose())


def test_docker_compose_config_accepts_the_file():
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "compose", "version"], capture_output=True).returncode:
        pytest.skip("no docker compose plugin here")
    env = {**os.environ, **{k: "x" for k in ("POSTGRES_PASSWORD", "AIRFLOW_JWT_SECRET", "AIRFLOW_API_SECRET_KEY",
                                             "PANEL_DB_URL", "PANELFLOW_ADMIN_PASSWORD")}}
    out = subprocess.run([docker, "compose", "-f", str(ROOT / "docker-compose.yaml"), "config", "--format", "json"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    resolved = json.loads(out.stdout)["services"]
    assert resolved["init"]["environment"]["PANELFLOW_ADMIN_PASSWORD"] == "x"  # from the environment
    assert all(s["environment"]["AIRFLOW__CORE__AUTH_MANAGER"] == FAB
               for n, s in resolved.items() if n not in ("postgres", "redis"))
