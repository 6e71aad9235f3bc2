"""Render ``airflow.cfg.template`` → ``$AIRFLOW_HOME/airflow.cfg``.

``python -m panelflow.config render`` uses the environment; ``make run`` and every
docker-compose service render the same template, so one file says how Airflow is set up.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from string import Template

ROOT = Path(__file__).resolve().parents[2]

DEFAULTS = {
    "PANELFLOW_ROOT": str(ROOT),
    "PANELFLOW_EXECUTOR": "LocalExecutor",
    "PANELFLOW_PARALLELISM": "4",
    "PANELFLOW_API_PORT": "8080",
    "PANELFLOW_API_HOST": "127.0.0.1",
    "PANELFLOW_WORKER_LOG_PORT": "8793",
    "PANELFLOW_TRIGGER_LOG_PORT": "8794",
    "PANELFLOW_SCHEDULER_HEALTH_PORT": "8974",
}


def render(airflow_home: Path | str, env: dict[str, str] | None = None) -> Path:
    env = {**DEFAULTS, **(env if env is not None else os.environ)}
    env["AIRFLOW_HOME"] = str(airflow_home)
    env.setdefault("PANELFLOW_BASE_URL", f"http://localhost:{env['PANELFLOW_API_PORT']}")
    text = Template((ROOT / "airflow.cfg.template").read_text()).substitute(env)
    target = Path(airflow_home) / "airflow.cfg"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    return target


if __name__ == "__main__":
    if sys.argv[1:2] != ["render"]:
        sys.exit("usage: python -m panelflow.config render")
    print(render(os.environ.get("AIRFLOW_HOME", str(Path.home() / "airflow"))))
