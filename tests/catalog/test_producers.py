"""Every panel table a built step reads has a producer: a built step, a migration's seed rows, or the panel
(``panelflow.catalog.panel_writers.PANEL_WRITERS``). A step reading a table nothing fills does nothing in
production, however green its own tests (which insert the rows themselves).

How the SQL is found. SQL lives in Python string constants. For each built step (``run:`` and
``map_over:`` of the catalog, via ``load_catalog``) the test takes the function and, transitively, every
module-level function, class and constant it names — in its own module and in the ``panelflow.steps`` /
``panelflow.services`` modules it imports from (also imports inside functions). In those strings (never
docstrings) an identifier after ``FROM``/``JOIN`` is a read; after ``INSERT INTO``/``MERGE INTO``/``COPY``
a write that produces rows. ``UPDATE``/``DELETE FROM`` change or remove rows and produce none, so they
make no producer. f-strings are rendered: ``{NAME}`` of a module-level string is inlined, ``{obj.field}``
stands for every string passed as ``field`` to a constructor in the module (the recycle-bin notices'
``_PurgeNotices``). Only names of real panel tables (the migrated panel DB's) count, so English words and
temporary tables fall away; names a string defines as CTEs (``name AS (``) are not reads in that string.
Seeds: ``INSERT INTO <table> … VALUES`` in a migration (``INSERT … SELECT`` is a backfill, not a seed).

Limits: a table named only at run time (``sql.Identifier(table)`` with the name from a parameter) is not
seen — such code is the retention engine's deletes, which produce nothing; a CTE named like a real table
is taken for the CTE; a write done by a function the step reaches only through a value (a handler passed
around) counts when that function's class or module constant is named by the step.

Open gaps are listed below with who fills them; the test fails on a new gap and on a listed gap that is
closed, so the list only shrinks.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from panelflow.catalog import load_catalog
from panelflow.catalog.panel_writers import PANEL_WRITERS, PANELFLOW_WRITERS

PLUGINS = Path(__file__).resolve().parents[2] / "plugins"
MIGRATIONS = PLUGINS / "panelflow" / "db" / "migrations" / "versions"
FOLLOWED = ("panelflow.steps", "panelflow.services")

# Tables built steps read that nothing fills yet, and who fills them (see the module's doc).
OPEN_GAPS: dict[str, str] = {}

_REF = re.compile(r"\b(?P<kw>INSERT\s+INTO|MERGE\s+INTO|COPY|UPDATE|DELETE\s+FROM|FROM|JOIN)\s+(?:ONLY\s+)?"
                  r"(?P<name>[A-Za-z_][A-Za-z0-9_]*|\{[A-Za-z_][A-Za-z0-9_]*\})", re.IGNORECASE)
_CTE = re.compile(r"\b([A-Za-z_][A-Za-z0-9_]*)\s+AS\s+(?:NOT\s+)?(?:MATERIALIZED\s+)?\(", re.IGNORECASE)
_SEED = re.compile(r"\bINSERT\s+INTO\s+([a-z_][a-z0-9_]*)\b[^;]*?\bVALUES\b", re.IGNORECASE | re.DOTALL)
PRODUCES = ("INSERT INTO", "MERGE INTO", "COPY")


@dataclass
class Module:
    name: str
    tree: ast.Module
    defs: dict[str, ast.AST] = field(default_factory=dict)
    imports: dict[str, tuple[str, str | None]] = field(default_factory=dict)  # alias → (module, attribute)


class Source:
    """The step modules' source, parsed once; ``closure(module, name)`` is what a step's code holds."""

    def __init__(self):
        self.modules: dict[str, Module | None] = {}

    def module(self, name: str) -> Module | None:
        if name not in self.modules:
            base = PLUGINS / Path(*name.split("."))
            path = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
            self.modules[name] = self._parse(name, path) if path.exists() else None
        return self.modules[name]

    @staticmethod
    def _parse(name: str, path: Path) -> Module:
        tree = ast.parse(path.read_text(), str(path))
        mod = Module(name, tree)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                mod.defs[node.name] = node
            elif isinstance(node, ast.Assign):
                for target in node.targets:
                    if isinstance(target, ast.Name):
                        mod.defs[target.id] = node
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                mod.defs[node.target.id] = node
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                source = node.module or ""
                if node.level:
                    parts = package.split(".")
                    source = ".".join(parts[: len(parts) - node.level + 1] + ([source] if source else []))
                for alias in node.names:
                    mod.imports[alias.asname or alias.name] = (source, alias.name)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    mod.imports[alias.asname or alias.name.split(".")[0]] = (alias.name, None)
        return mod

    def _resolve(self, mod: Module, name: str) -> tuple[str, str] | None:
        if name in mod.defs:
            return mod.name, name
        target = mod.imports.get(name)
        if target is not None and target[1] is not None and target[0].startswith(FOLLOWED):
            return target[0], target[1]
        return None

    def _parameters(self, key: tuple[str, str] | None) -> list[str]:
        """A callee's positional names: a function's parameters, a dataclass's fields."""
        mod = self.module(key[0]) if key else None
        node = mod.defs.get(key[1]) if mod else None
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            return [a.arg for a in node.args.posonlyargs + node.args.args]
        if isinstance(node, ast.ClassDef):
            return [s.target.id for s in node.body if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)]
        return []

    def closure(self, module: str, name: str) -> tuple[list[str], dict[str, set[str]]]:
        """The strings of ``module.name`` and of everything it names, transitively, and the string constants
        bound to each parameter, field or ``format`` key by the calls among them (what ``{name}`` may be)."""
        seen: set[tuple[str, str]] = set()
        texts: list[str] = []
        bindings: dict[str, set[str]] = {}
        todo = [(module, name)]
        while todo:
            key = todo.pop()
            mod = self.module(key[0])
            if key in seen or mod is None or key[1] not in mod.defs:
                continue
            seen.add(key)
            node = mod.defs[key[1]]
            docstrings = {id(n.body[0].value) for n in ast.walk(node)
                          if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and n.body
                          and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
            for sub in ast.walk(node):
                if isinstance(sub, ast.JoinedStr):
                    texts.append(self._render(mod, sub))
                elif isinstance(sub, ast.Constant) and isinstance(sub.value, str) and id(sub) not in docstrings:
                    texts.append(sub.value)
                elif isinstance(sub, ast.Name):
                    found = self._resolve(mod, sub.id)
                    if found:
                        todo.append(found)
                elif isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Name):
                    target = mod.imports.get(sub.value.id)
                    if target is not None:
                        whole = target[0] if target[1] is None else f"{target[0]}.{target[1]}"
                        if whole.startswith(FOLLOWED):
                            todo.append((whole, sub.attr))
                if isinstance(sub, ast.Call):
                    callee = self._resolve(mod, sub.func.id) if isinstance(sub.func, ast.Name) else None
                    pairs = list(zip(self._parameters(callee), sub.args))
                    pairs += [(k.arg, k.value) for k in sub.keywords if k.arg]
                    for param, value in pairs:
                        if isinstance(value, ast.Constant) and isinstance(value.value, str):
                            bindings.setdefault(param, set()).add(value.value)
        return texts, bindings

    def _render(self, mod: Module, node: ast.JoinedStr, depth: int = 0) -> str:
        """An f-string's text: ``{NAME}`` of a module-level string is inlined, any other ``{name}`` /
        ``{obj.name}`` stays ``{name}`` (resolved from the closure's bindings), the rest is blank."""
        out = []
        for part in node.values:
            if isinstance(part, ast.Constant):
                out.append(str(part.value))
                continue
            value = part.value
            assigned = mod.defs.get(value.id) if isinstance(value, ast.Name) else None
            if isinstance(assigned, ast.Assign) and isinstance(assigned.value, ast.Constant):
                out.append(str(assigned.value.value))
            elif isinstance(assigned, ast.Assign) and isinstance(assigned.value, ast.JoinedStr) and depth < 5:
                out.append(self._render(mod, assigned.value, depth + 1))
            elif isinstance(value, ast.Name):
                out.append("{%s}" % value.id)
            elif isinstance(value, ast.Attribute):
                out.append("{%s}" % value.attr)
            else:
                out.append(" ")
        return "".join(out)


def references(texts: list[str], bindings: dict[str, set[str]], tables: set[str]) -> tuple[set[str], set[str]]:
    """(tables read, tables given rows) in these strings; ``{name}`` stands for each string bound to it."""
    reads: set[str] = set()
    produced: set[str] = set()
    for text in texts:
        ctes = {m.group(1).lower() for m in _CTE.finditer(text)}
        for m in _REF.finditer(text):
            kw = " ".join(m.group("kw").upper().split())
            raw = m.group("name")
            names = bindings.get(raw[1:-1], set()) if raw.startswith("{") else {raw}
            for name in (n.lower() for n in names):
                if name not in tables:
                    continue
                if kw in ("FROM", "JOIN") and name not in ctes:
                    reads.add(name)
                elif kw in PRODUCES:
                    produced.add(name)
    return reads, produced


def seeded_tables() -> set[str]:
    return {m.group(1).lower() for path in MIGRATIONS.glob("*.py") for m in _SEED.finditer(path.read_text())}


@pytest.fixture(scope="module")
def panel_tables(migrated_panel_db) -> set[str]:
    import psycopg

    with psycopg.connect(migrated_panel_db) as conn:
        return {r[0] for r in conn.execute("SELECT table_name FROM information_schema.tables"
                                           " WHERE table_schema = 'public' AND table_type = 'BASE TABLE'"
                                           " AND table_name <> 'alembic_version'")}


def analyse(tables: set[str]) -> tuple[dict[str, list[str]], set[str]]:
    """(table read → the built steps reading it, tables a built step gives rows)."""
    source = Source()
    readers: dict[str, list[str]] = {}
    produced: set[str] = set()
    for thread in load_catalog().threads:
        if not thread.is_live:
            continue
        for step in thread.steps:
            for path in filter(None, (step.run, step.map_over)):
                module, _, name = path.rpartition(".")
                reads, writes = references(*source.closure(module, name), tables)
                produced |= writes
                for table in reads:
                    readers.setdefault(table, []).append(f"{thread.name} {step.number} ({step.id})")
    return readers, produced


def test_every_table_a_built_step_reads_has_a_producer(panel_tables):
    readers, produced = analyse(panel_tables)
    seeds = seeded_tables()
    filled = produced | seeds | set(PANEL_WRITERS) | set(PANELFLOW_WRITERS)
    gaps = {t: sorted(set(r)) for t, r in readers.items() if t not in filled}
    new = {t: r for t, r in gaps.items() if t not in OPEN_GAPS}
    closed = sorted(set(OPEN_GAPS) - set(gaps))
    assert not new, "tables read by built steps that nothing fills (no built step writes them, no migration seeds" \
        " them, not in panelflow.catalog.panel_writers):\n" + "\n".join(f"  {t}: read by {', '.join(r)}"
                                                                        for t, r in sorted(new.items()))
    assert not closed, f"listed as open gaps but now filled (remove them from OPEN_GAPS): {closed}"


def test_the_panel_writers_list_names_real_tables_read_by_steps_each_with_its_reason(panel_tables):
    unknown = sorted((set(PANEL_WRITERS) | set(PANELFLOW_WRITERS)) - panel_tables)
    assert not unknown, f"panel_writers names tables no migration creates: {unknown}"
    readers, _ = analyse(panel_tables)
    unread = sorted((set(PANEL_WRITERS) | set(PANELFLOW_WRITERS)) - set(readers))
    assert not unread, f"panel_writers names tables no built step reads (the entry says nothing): {unread}"
    assert all(len(reason.split()) >= 4 for reason in (PANEL_WRITERS | PANELFLOW_WRITERS).values())


def test_the_scan_sees_reads_writes_ctes_and_rendered_f_strings():
    tables = {"orders", "order_lines", "recycle_bin_items", "recycle_bin_notices", "customers"}
    reads, produced = references([
        "WITH orders AS (SELECT 1) SELECT * FROM orders JOIN customers c ON true",
        "INSERT INTO {table} (id) SELECT id FROM recycle_bin_items FOR UPDATE OF x",
        "UPDATE recycle_bin_notices SET a = 1; DELETE FROM customers",
    ], {"table": {"order_lines"}}, tables)
    assert reads == {"customers", "recycle_bin_items"} and produced == {"order_lines"}
    readers, produced = analyse({"recycle_bin_items", "recycle_bin_notices", "email_outbox", "exchange_mailboxes"})
    assert "ProvisioningWork 41 (send_recycle_bin_notifications)" in readers["recycle_bin_items"]
    # GroupActionWorkEx 1, ProvisioningWork 41 (an f-string's {notices}), the outbox service
    assert {"recycle_bin_items", "recycle_bin_notices", "email_outbox"} <= produced
