"""The catalog's ``labels:`` (the words the Threads Manager's Automation Status view puts on a thread's
day counts) name counts the steps really report, and every live thread that reports counts has words.

Whether a step returns a key is only known when it runs, so the model checks only the shape; this test
reads the source instead (``ast``, nothing is run). A label's key must appear, in the step's module or in
any ``panelflow`` module it imports (transitively, lazy imports included, relative imports resolved), as
one of:

- a string constant (``report.add("sent")``, ``{"deleted": n}``, ``StepReport().zero("invoices")``,
  ``counts["users_written"] += 1``, the literals of a ``for key in (...)`` loop);
- a keyword argument name (``Counter(contacts_read=0)``, ``dict(sent=n)``);
- an f-string, with each ``{…}`` standing for any snake_case word, when the f-string has at least
  :data:`MIN_FIXED` fixed characters: ``f"{plural}_failed"`` (what :func:`panelflow.step.for_each` counts
  as ``servers_failed``), ``f"messages_{status}"``. Shorter shapes (``f"{kind}s"``) would match nearly
  anything and are left out.

This catches a mistyped or invented key (a label that would never show) without running any backend. It
cannot tell whether a key of a shared module is the one *this* step returns: that is for the reviewer.

Every live thread with at least one step that reports a numeric top-level count needs one label at least;
the threads that report none are :data:`NO_COUNTS`, each with why, and the list is exact (a thread that
gets counts or labels must leave it).
"""

from __future__ import annotations

import ast
import re
from functools import cache

import pytest

from harness.source import MODULES, imports
from panelflow.catalog import load_catalog

MIN_FIXED = 4
WORD = r"[a-z0-9]+(?:_[a-z0-9]+)*"

# Live threads whose steps report no numeric top-level count (run_counts.counts_of keeps none), so there
# is nothing to word. A thread leaves this list when its summary gains a top-level count and a label.
NO_COUNTS: dict[str, str] = {
    "LicenseWork": "handle_license returns run_parts' summary: the 'licences' and 'usage' parts nested, "
                   "or configured: false",
}


@cache
def _reach(module: str) -> frozenset[str]:
    seen, todo = {module}, [module]
    while todo:
        for other in imports(todo.pop()) - seen:
            seen.add(other)
            todo.append(other)
    return frozenset(seen)


@cache
def _words(module: str) -> tuple[frozenset[str], tuple[re.Pattern, ...]]:
    """The string constants and keyword names of one module, and its f-strings as patterns."""
    words: set[str] = set()
    shapes: list[re.Pattern] = []
    for node in ast.walk(ast.parse(MODULES[module].read_text(), str(MODULES[module]))):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            words.add(node.value)
        elif isinstance(node, ast.keyword) and node.arg:
            words.add(node.arg)
        elif isinstance(node, ast.JoinedStr):
            fixed = [v.value for v in node.values if isinstance(v, ast.Constant) and isinstance(v.value, str)]
            if sum(map(len, fixed)) >= MIN_FIXED:
                shapes.append(re.compile("".join(
                    re.escape(v.value) if isinstance(v, ast.Constant) else WORD for v in node.values)))
    return frozenset(words), tuple(shapes)


def _known(module: str, key: str) -> bool:
    for other in _reach(module):
        words, shapes = _words(other)
        if key in words or any(shape.fullmatch(key) for shape in shapes):
            return True
    return False


CATALOG = load_catalog()
LABELLED = [(t.name, s) for t in CATALOG.live_threads for s in t.steps if s.labels]


def test_some_steps_are_labelled():
    assert len(LABELLED) > 50


@pytest.mark.parametrize("thread, step", LABELLED, ids=[f"{t}.{s.id}" for t, s in LABELLED])
def test_label_keys_are_counts_the_step_names(thread, step):
    assert step.run, f"{thread}.{step.id} has labels but no run: nothing reports its counts"
    module = step.run.rpartition(".")[0]
    assert module in MODULES, f"{thread}.{step.id}: {module} is not a panelflow module"
    unknown = [key for key in step.labels if not _known(module, key)]
    assert not unknown, (f"{thread}.{step.id}: label keys {unknown} appear nowhere in {module} or the panelflow "
                         f"modules it imports — a typo, or a count the step does not report")


def test_threads_without_labels_are_the_ones_without_counts():
    unlabelled = {t.name for t in CATALOG.live_threads if t.steps and not CATALOG.labels(t)}
    assert unlabelled == set(NO_COUNTS), (
        f"live threads without any labelled count: {sorted(unlabelled - set(NO_COUNTS))} need labels; "
        f"{sorted(set(NO_COUNTS) - unlabelled)} have labels now or are no longer live: drop them from NO_COUNTS")


def test_no_counts_threads_are_live():
    live = {t.name for t in CATALOG.live_threads}
    assert set(NO_COUNTS) <= live, f"NO_COUNTS names threads that are not live: {sorted(set(NO_COUNTS) - live)}"
