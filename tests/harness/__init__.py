"""What the tests share besides fixtures: the repository root, the servers the tests start
(``samba_dc``, ``airflow_cluster``), the sandbox loader and the DAG-shape snapshot."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
