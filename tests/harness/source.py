"""plugins/panelflow read as source (``ast``, nothing imported): its modules and what each imports.
Shared by the house rules (tests/test_layout.py) and the catalog's label check
(tests/catalog/test_labels.py)."""

from __future__ import annotations

import ast
from pathlib import Path

from harness import ROOT

PLUGINS = ROOT / "plugins"


def _modules() -> dict[str, Path]:
    mods = {}
    for path in (PLUGINS / "panelflow").rglob("*.py"):
        parts = path.relative_to(PLUGINS).with_suffix("").parts
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return mods


MODULES = _modules()


def imports(module: str) -> set[str]:
    """Every panelflow module ``module`` imports, at any depth of its code (lazy imports too),
    relative imports resolved; not the packages it is itself inside."""
    path = MODULES[module]
    found: set[str] = set()
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".")
                parts = parts if is_package else parts[:-1]
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != module and not module.startswith(target + "."):
                found.add(target)
    return found
