"""docker-compose.yaml (no Docker engine runs here): the services the catalog needs are there."""


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
    queues_used = {catalog.queue(t) for t in catalog.live_threads}
    consumed = set()
    for node, svc in ((n.removeprefix("worker-"), s) for n, s in workers.items()):
        queues = svc["command"].split("--queues", 1)[1].split()[0].strip('"').split(",")
        assert node in queues
        consumed |= set(queues)
    assert queues_used <= consumed  # every task queue has a worker
    for name, svc in services.items():
        if name not in ("postgres", "redis"):
            assert svc["build"] == "." and svc["environment"]["PANELFLOW_EXECUTOR"] == "CeleryExecutor"
    text = (ROOT / "docker-compose.yaml").read_text()
    assert "password" not in text.lower().replace("postgres_password", "")  # secrets only via the environment
