"""What the tests share besides fixtures: the repository root, the servers the tests start
(``samba_dc``, ``airflow_cluster``), the sandbox loader and the DAG-shape snapshot."""

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def require_binary(name: str) -> str:
    """A system binary the test starts; under CI=true a missing one fails the test, never skips it."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin")
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is not installed (make test installs it: make system-deps)")
        pytest.skip(f"{name} is not installed (make system-deps)")
    return path
