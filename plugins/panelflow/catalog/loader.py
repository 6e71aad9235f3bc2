"""Read ``include/catalog/*.yaml`` into a validated :class:`Catalog`.

Every error names the file, the line, the thread and the field, and all errors are reported at
once: a broken catalog raises instead of building fewer DAGs, so a typo can never silently drop
a thread from the scheduler.
"""

from __future__ import annotations

import ast
import importlib.util
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from pydantic import TypeAdapter, ValidationError

from panelflow.catalog.model import Domain, RunGroup, Settings, Step, Thread
from panelflow.queues import QUEUES
from panelflow.step import STEP_INPUTS

GROUP_ACTIONS_POOL = "group_actions"
DEFAULT_POOL = "default_pool"

try:
    _Loader = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - libyaml missing
    _Loader = yaml.SafeLoader


def default_catalog_dir() -> Path:
    env = os.environ.get("PANELFLOW_CATALOG")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3] / "include" / "catalog"


class CatalogError(ValueError):
    """All problems found in a catalog, one per line: ``file:line: thread X, field y: message``."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__(f"{len(problems)} problem(s) in the catalog:\n" + "\n".join(problems))


@dataclass(frozen=True)
class Source:
    file: str
    lines: dict[tuple, int]

    def line(self, path: tuple) -> int:
        """The line of the deepest YAML node on ``path`` that exists."""
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get((), 1)


def _to_python(node: yaml.Node, path: tuple, lines: dict[tuple, int], file: str) -> Any:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = _to_python(key_node, path + ("<key>",), {}, file)
            if key in out:
                raise CatalogError([f"{file}:{key_node.start_mark.line + 1}: duplicate key {key!r}"])
            out[key] = _to_python(value_node, path + (key,), lines, file)
            lines[path + (key,)] = key_node.start_mark.line + 1  # a field's line is its key's line
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_to_python(item, path + (i,), lines, file) for i, item in enumerate(node.value)]
    if node.tag == "tag:yaml.org,2002:int" and ":" in node.value:
        return node.value  # YAML 1.1 reads 03:20 as base-60 200; a run-at time is meant
    return _CONSTRUCTOR.construct_object(node)


_CONSTRUCTOR = yaml.constructor.SafeConstructor()


@dataclass
class Catalog:
    settings: Settings
    nodes: dict[str, str]
    run_groups: dict[str, RunGroup]
    domains: dict[str, Domain]
    threads: list[Thread]
    origin: dict[str, tuple[str, int]] = field(default_factory=dict)  # thread name → (file, line)

    @property
    def live_threads(self) -> list[Thread]:
        return [t for t in self.threads if t.is_live]

    def thread(self, name: str) -> Thread:
        for t in self.threads:
            if t.name == name:
                return t
        raise KeyError(name)

    def owners(self, thread: Thread) -> list[str]:
        return thread.owners or self.domains[thread.domain].owners

    def alert_to(self, thread: Thread) -> list[str]:
        return thread.alert_to if thread.alert_to is not None else self.domains[thread.domain].alert_to

    def labels(self, thread: Thread | str) -> list[tuple[str, str, str]]:
        """(step_id, summary key, words with ``{n}``) of a thread's counts, in step order: the
        Threads Manager words its totals from the catalog, never from code of its own."""
        thread = self.thread(thread) if isinstance(thread, str) else thread
        return [(s.id, key, words) for s in thread.steps for key, words in s.labels.items()]

    def retries(self, thread: Thread) -> int:
        return self.settings.defaults.retries if thread.retries is None else thread.retries

    def timeout_minutes(self, thread: Thread) -> int:
        return thread.timeout_minutes or self.settings.defaults.timeout_minutes

    def priority(self, thread: Thread) -> int:
        return self.settings.defaults.priority if thread.priority is None else thread.priority

    @staticmethod
    def priority_weight(priority: int) -> int:
        """MachPanel priority 0 (highest) … 10 (lowest) → Airflow weight 11 … 1 (higher runs first)."""
        return 11 - priority

    def pool(self, thread: Thread, step) -> str:
        """A step's pool: its own (group actions), else its thread's first run group."""
        if step.pool:
            return step.pool
        return thread.run_groups[0] if thread.run_groups else DEFAULT_POOL

    @staticmethod
    def queue(thread: Thread, step: Step | None = None) -> str:
        """Allowed nodes → one Celery queue; a worker of node X consumes every queue naming X.
        A step with nodes of its own runs on those instead of the thread's."""
        return "+".join(step.nodes if step is not None and step.nodes else thread.nodes)

    def pools(self) -> dict[str, dict[str, Any]]:
        """The pools the catalog needs, in ``airflow pools import`` shape."""
        pools = {
            name: {"slots": g.slots, "description": f"panelflow run group: {g.description}".strip(": "),
                   "include_deferred": False}
            for name, g in self.run_groups.items()
        }
        pools[GROUP_ACTIONS_POOL] = {
            "slots": self.settings.group_actions.threads_run_simultaneously,
            "description": "panelflow: group-action jobs run simultaneously (Group Job Settings)",
            "include_deferred": False,
        }
        return pools


def _where(src: Source, data: Any, loc: tuple, base: tuple = ()) -> tuple[int, str, str]:
    """Map a pydantic error location to (line, thread, field) using the raw YAML data.

    Discriminator tags (``schedule.periodic.every``) are dropped and step indexes become step
    ids (``steps.expire_sessions.run``), so the field reads as the operator wrote it.
    """
    path: list = []
    fields: list[str] = []
    node: Any = data
    for n, part in enumerate(loc):
        if isinstance(node, dict) and part in node:
            node = node[part]
            fields.append(str(part))
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
            sid = node.get("id") if isinstance(node, dict) else None
            fields.append(str(sid) if sid else f"[{part}]")
        elif isinstance(node, dict) and node.get("kind") == part:
            continue  # a discriminator tag
        elif n == len(loc) - 1:
            fields.append(str(part))  # a missing field: name it, stay on the parent's line
            continue
        else:
            continue  # a discriminator tag
        path.append(part)
    thread = str(data.get("name", "")) if isinstance(data, dict) and base[:1] == ("threads",) else ""
    return src.line(base + tuple(path)), thread, ".".join(fields) or "(file)"


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _fmt(file: str, line: int, thread: str, fld: str, msg: str) -> str:
    who = f"thread {thread}, " if thread else ""
    msg = msg.removeprefix("Value error, ")
    return f"{file}:{line}: {who}field {fld}: {msg}"


_SECTIONS: dict[str, Any] = {"settings": Settings, "nodes": str, "run_groups": RunGroup, "domains": Domain}


def _report(problems: list[str], src: Source, rel: str, data: dict, exc: ValidationError, prefix: tuple) -> None:
    for err in exc.errors():
        line, thread, fld = _where(src, data, prefix + tuple(err["loc"]))
        problems.append(_fmt(rel, line, thread, fld, err["msg"]))


@lru_cache(maxsize=64)
def _module_functions(module: str) -> dict[str, list[str]] | None:
    """Top-level functions of a step module and their parameters, read from its source.

    Parsed, not imported: checking the catalog must not load backend libraries.
    """
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    tree = ast.parse(Path(spec.origin).read_text(), spec.origin)
    return {
        n.name: [a.arg for a in n.args.posonlyargs + n.args.args + n.args.kwonlyargs]
        for n in tree.body
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
    }


def _find_cycle(thread: Thread) -> list[str] | None:
    after = {s.id: s.after for s in thread.steps}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in after[n]:
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (c := visit(m)):
                return c
        stack.pop()
        state[n] = 2
        return None

    for sid in after:
        if sid not in state and (c := visit(sid)):
            return c
    return None


def load_catalog(directory: Path | str | None = None, *, check_steps: bool = True) -> Catalog:
    """The validated catalog; every problem at once, each naming file, line, thread and field.

    ``check_steps`` also reads each step module's source to check that every ``run:`` and
    ``map_over:`` names a function taking only step inputs. ``make catalog-check``, the report and
    the tests do; the DAG file's parse (every 30 s in the dag-processor) does not — a task
    resolves its function when it runs, so the parse cost stays flat as steps are added.
    """
    directory = Path(directory) if directory else default_catalog_dir()
    files = sorted(directory.glob("*.yaml"))
    if not files:
        raise CatalogError([f"{directory}: no *.yaml catalog files"])
    problems: list[str] = []
    settings: Settings | None = None
    nodes: dict[str, str] = {}
    run_groups: dict[str, RunGroup] = {}
    domains: dict[str, Domain] = {}
    threads: list[tuple[Thread, Source, int]] = []
    seen_sections: dict[tuple[str, str], str] = {}

    for path in files:
        rel = _display(path)
        lines: dict[tuple, int] = {}
        try:
            root = yaml.compose(path.read_text(encoding="utf-8"), Loader=_Loader)
            data = _to_python(root, (), lines, rel) if root is not None else {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            problems.append(f"{rel}:{mark.line + 1 if mark else 1}: not valid YAML: {exc}")
            continue
        except CatalogError as exc:
            problems.extend(exc.problems)
            continue
        src = Source(rel, lines)
        if not isinstance(data, dict):
            problems.append(f"{rel}:1: a catalog file is a mapping of sections (settings, nodes, run_groups, domains, threads)")
            continue
        raw_threads = data.get("threads") if isinstance(data.get("threads"), list) else []
        sections = {k: v for k, v in data.items() if k != "threads"}
        if "threads" in data and not isinstance(data["threads"], list):
            problems.append(_fmt(rel, src.line(("threads",)), "", "threads", "must be a list of threads"))
        # Sections are validated entry by entry: a bad entry is reported, its name stays known
        # (so threads naming it do not pile up follow-on errors), and the rest is still checked.
        for section, value in sections.items():
            if section not in _SECTIONS:
                problems.append(_fmt(rel, src.line((section,)), "", section,
                                     f"unknown section; a catalog file has {sorted(_SECTIONS) + ['threads']}"))
                continue
            if section == "settings":
                try:
                    file_settings = Settings.model_validate(value)
                except ValidationError as exc:
                    _report(problems, src, rel, sections, exc, ("settings",))
                    file_settings = Settings()
                if settings is not None:
                    problems.append(_fmt(rel, src.line(("settings",)), "", "settings", "settings are already defined in another file"))
                settings = file_settings
                continue
            if not isinstance(value, dict):
                problems.append(_fmt(rel, src.line((section,)), "", section, "must be a mapping of name: definition"))
                continue
            model, target = _SECTIONS[section], {"nodes": nodes, "run_groups": run_groups, "domains": domains}[section]
            for key, entry in value.items():
                if (section, key) in seen_sections:
                    problems.append(_fmt(rel, src.line((section, key)), "", f"{section}.{key}",
                                         f"duplicate id, first defined in {seen_sections[(section, key)]}"))
                seen_sections.setdefault((section, key), f"{rel}:{src.line((section, key))}")
                try:
                    target[key] = TypeAdapter(model).validate_python(entry)
                except ValidationError as exc:
                    _report(problems, src, rel, sections, exc, (section, key))
                    target[key] = None
        for i, raw in enumerate(raw_threads):
            # Each thread on its own: one bad thread is reported without hiding the checks of the rest.
            try:
                threads.append((Thread.model_validate(raw), src, i))
            except ValidationError as exc:
                for err in exc.errors():
                    line, thread, fld = _where(src, raw, err["loc"], ("threads", i))
                    problems.append(_fmt(rel, line, thread or f"#{i + 1}", fld, err["msg"]))

    settings = settings or Settings()
    origin: dict[str, tuple[str, int]] = {}
    dag_ids: dict[str, str] = {}
    live = {t.name for t, _, _ in threads if t.is_live}
    for t, src, i in threads:
        here = lambda *p: src.line(("threads", i) + p)  # noqa: E731
        if t.name in origin:
            f, ln = origin[t.name]
            problems.append(_fmt(src.file, here("name"), t.name, "name", f"duplicate thread name, first defined at {f}:{ln}"))
            continue
        if t.dag_id in dag_ids:
            problems.append(_fmt(src.file, here("name"), t.name, "name", f"dag_id {t.dag_id} clashes with thread {dag_ids[t.dag_id]}"))
        dag_ids[t.dag_id] = t.name
        origin[t.name] = (src.file, here())
        if t.legacy is not None:
            for f in ("domain", "schedule", "priority", "steps", "run_groups", "nodes", "tags"):
                if getattr(t, f):
                    problems.append(_fmt(src.file, here(f), t.name, f, "a legacy thread produces no DAG: remove this field"))
            if t.legacy.superseded_by not in live:
                problems.append(_fmt(src.file, here("legacy", "superseded_by"), t.name, "legacy.superseded_by",
                                     f"{t.legacy.superseded_by!r} is not a live thread of the catalog"))
            continue
        for f in ("domain", "schedule", "nodes", "steps"):
            if not getattr(t, f):
                problems.append(_fmt(src.file, here(), t.name, f, "a live thread needs this field (or legacy: to retire it)"))
        ids: dict[str, int] = {}
        for k, step in enumerate(t.steps):
            if step.id in ids:
                problems.append(_fmt(src.file, here("steps", k, "id"), t.name, f"steps.{step.id}.id",
                                     f"duplicate step id, first used at line {here('steps', ids[step.id], 'id')}"))
            ids.setdefault(step.id, k)
        for k, step in enumerate(t.steps):
            for j, a in enumerate(step.after):
                if a not in ids:
                    problems.append(_fmt(src.file, here("steps", k, "after", j), t.name, f"steps.{step.id}.after",
                                         f"unknown step {a!r}; steps of this thread: {list(ids)}"))
        if t.domain and t.domain not in domains:
            problems.append(_fmt(src.file, here("domain"), t.name, "domain", f"unknown domain {t.domain!r}; known: {sorted(domains)}"))
        for j, g in enumerate(t.run_groups):
            if g not in run_groups:
                problems.append(_fmt(src.file, here("run_groups", j), t.name, "run_groups", f"unknown run group {g!r}; known: {sorted(run_groups)}"))
        for j, n in enumerate(t.nodes):
            if n not in nodes:
                problems.append(_fmt(src.file, here("nodes", j), t.name, "nodes", f"unknown node {n!r}; known: {sorted(nodes)}"))
        if t.deadline is not None and t.schedule is not None and t.schedule.kind == "daemon":
            problems.append(_fmt(src.file, here("deadline"), t.name, "deadline",
                                 "a daemon's run waits for work and has no run-at time: remove the deadline"))
        if t.schedule is not None and t.schedule.kind == "daemon" and t.schedule.queue not in QUEUES:
            problems.append(_fmt(src.file, here("schedule", "queue"), t.name, "schedule.queue",
                                 f"unknown queue {t.schedule.queue!r}; known: {sorted(QUEUES)}"))
        for k, step in enumerate(t.steps):
            for j, n in enumerate(step.nodes):
                if n not in nodes:
                    problems.append(_fmt(src.file, here("steps", k, "nodes", j), t.name, f"steps.{step.id}.nodes",
                                         f"unknown node {n!r}; known: {sorted(nodes)}"))
        for k, step in enumerate(t.steps):
            at = lambda *p: here("steps", k, *p)  # noqa: E731
            if step.pool is not None and step.pool != GROUP_ACTIONS_POOL and step.pool not in run_groups:
                problems.append(_fmt(src.file, at("pool"), t.name, f"steps.{step.id}.pool",
                                     f"unknown pool {step.pool!r}; use {GROUP_ACTIONS_POOL} or a run group"))
            for field in ("run", "map_over"):
                path = getattr(step, field)
                if not path or not check_steps:
                    continue
                module, _, func = path.rpartition(".")
                functions = _module_functions(module)
                where = f"steps.{step.id}.{field}"
                if functions is None:
                    problems.append(_fmt(src.file, at(field), t.name, where, f"no module {module!r}"))
                elif func not in functions:
                    problems.append(_fmt(src.file, at(field), t.name, where, f"module {module} has no function {func!r}"))
                elif unknown := [a for a in functions[func] if a not in STEP_INPUTS]:
                    problems.append(_fmt(src.file, at(field), t.name, where,
                                         f"{path} takes {unknown}; a step may take {list(STEP_INPUTS)}"))
                elif field == "run" and "item" in functions[func] and not step.map_over:
                    problems.append(_fmt(src.file, at(field), t.name, where,
                                         f"{path} takes 'item' but the step has no map_over to list the items"))
            if step.map_over and not step.run:
                problems.append(_fmt(src.file, at("map_over"), t.name, f"steps.{step.id}.map_over",
                                     "map_over needs the step's run"))
        cycle = _find_cycle(t) if all(a in ids for s in t.steps for a in s.after) else None
        if cycle:
            problems.append(_fmt(src.file, here("steps"), t.name, "steps.after", f"dependency cycle {' → '.join(cycle)}"))
    if GROUP_ACTIONS_POOL in run_groups:
        problems.append(f"run group name {GROUP_ACTIONS_POOL!r} is reserved for the Group Job Settings pool")
    if problems:
        raise CatalogError(problems)
    return Catalog(settings, nodes, run_groups, domains, [t for t, _, _ in threads], origin)
