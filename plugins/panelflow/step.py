"""The step contract: what a step is given, what it returns, and how it works a list of endpoints.

A step is a plain function named in the catalog (``run: panelflow.steps.<package>.<function>``).
It names the inputs it needs as its parameters and the task supplies them (``STEP_INPUTS``):

- ``interval``: the run's data interval (:class:`Interval`) — the step's only clock, so reruns and
  backfills give the same result;
- ``panel_db``: the panel database hook (Airflow connection ``panel_db``);
- ``params``: the run's params;
- ``log``: the task's logger (at DEBUG when the Threads Manager's "Enable Logging" is on);
- ``item``: for a step with ``map_over``, the one item (tenant, server …) this mapped task
  instance handles; the ``map_over`` function takes the same inputs and returns the list.

It returns a small summary dict — usually :meth:`StepReport.as_dict` — kept as the task's XCom.
A bad record is counted and named in the summary and skipped; the rest is processed.

A step that talks to several endpoints (servers, tenants, directories, hosts, mail boxes) works
them with :func:`for_each`, whose one failure rule every backend shares (see there).

This module imports nothing from Airflow or any backend: the catalog check reads it, and the
factory and the operators agree with it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

STEP_INPUTS = ("interval", "panel_db", "params", "log", "item")


class Interval(NamedTuple):
    """The span a run covers. ``end`` is the step's clock: ages and due dates are measured from it.

    ``tz`` is the thread's time zone (the catalog's), in which a run's calendar days are counted.
    """

    start: Any
    end: Any
    tz: str = "UTC"

    def days(self) -> tuple[date, date]:
        """The calendar days the run covers, ``[first, end)`` in the thread's time zone.

        BillingWork's 01:30 run covers 01:30 the day before → 01:30 today: the day before.
        A zero-length interval (a run with no data interval) covers the day before its clock.
        """
        zone = ZoneInfo(self.tz)
        first, end = self.start.astimezone(zone).date(), self.end.astimezone(zone).date()
        if end <= first:
            first = end - timedelta(days=1)
        return first, end


@dataclass
class StepReport:
    """Counts, plus every skipped record's reason (the first ``keep`` verbatim) for the task's summary.

    A bad record never fails the step: it is counted, named here and left for an operator,
    while the rest of the run is processed.
    """

    keep: int = 50
    counts: Counter = field(default_factory=Counter)
    skipped: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def add(self, key: str, n: int = 1) -> None:
        self.counts[key] += n

    def zero(self, *keys: str) -> StepReport:
        """Name counts that must show in the summary even when nothing happened."""
        for key in keys:
            self.counts[key] += 0
        return self

    def skip(self, reason: str, record: str) -> None:
        self.skipped[reason] += 1
        if len(self.examples) < self.keep:
            self.examples.append(f"{record}: {reason}")

    def skip_rows(self, rows: Iterable[tuple[Any, str]]) -> None:
        """``(record, reason)`` rows, for lists already bounded by the step (a page, a batch)."""
        for record, reason in rows:
            self.skip(reason, str(record))

    def skip_grouped(self, rows: Iterable[tuple[str, int, Any]]) -> None:
        """``(reason, count, examples)`` rows of a query that groups what a set-based statement left
        out (``count(*)`` and ``(array_agg(…))[1:keep]``): every record counts, the first ``keep``
        in all are named, and the query's answer stays small however many records are bad."""
        for reason, count, examples in rows:
            named = list(examples or ())[: max(self.keep - len(self.examples), 0)]
            for example in named:
                self.skip(reason, example)
            self.skipped[reason] += count - len(named)

    def as_dict(self) -> dict:
        return {**self.counts, "skipped": dict(self.skipped), "skipped_examples": list(self.examples)}


def first_line(exc: BaseException, limit: int = 300) -> str:
    """An error's first line, bounded: what a summary or a log line keeps of it."""
    return (str(exc).splitlines() or [type(exc).__name__])[0][:limit]


class EndpointsFailed(RuntimeError):
    """Every endpoint of a step failed: the task fails, so Airflow retries it and alerts."""


@dataclass
class Outcome:
    """What :func:`for_each` did: the endpoints that answered (with what ``work`` returned), the
    names of those that failed with why, and those deferred to the next run."""

    answered: list[Any] = field(default_factory=list)
    results: list[Any] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    deferred: list[str] = field(default_factory=list)


def for_each(
    endpoints: Iterable[Any],
    work: Callable[[Any], Any],
    *,
    report: StepReport,
    kind: str,
    plural: str | None = None,
    name: Callable[[Any], str] = lambda e: e.name,
    reason: Callable[[BaseException], str | None] | None = None,
    expected: tuple[type[BaseException], ...] = (),
    log: Any = None,
    everything_failed: Callable[[str], Exception] = EndpointsFailed,
    what: str = "",
    on_failure: Callable[[Any, BaseException, str], None] | None = None,
    skip_as: Callable[[str, str], tuple[str, str]] | None = None,
    message: Callable[[Outcome, int], str] | None = None,
    stop: Callable[[], bool] | None = None,
) -> Outcome:
    """Run ``work(endpoint)`` for each endpoint, under the one failure rule of every step.

    **The rule.** An endpoint whose work raises an error the *backend* can give — unreachable,
    timed out, refused, its connection missing or misconfigured: ``expected`` classes, or any
    exception for which ``reason(exc)`` returns a text — fails alone: it is counted in
    ``<plural>_failed``, its reason (first line) is a skipped entry of the summary, its name and
    reason are in the :class:`Outcome`, a warning is logged, and the next endpoint is worked. Any
    other exception is a bug of ours or the panel DB failing: it propagates at once (the task fails
    and Airflow retries it). When at least one endpoint was tried and **every** endpoint tried
    failed, ``everything_failed`` is raised after the loop, naming them: a step that reached
    nothing has not done its work. No endpoints at all is success with nothing to do. Endpoints
    left when ``stop()`` turns true (the run's time budget is spent) are deferred to the next run,
    counted in ``<plural>_deferred``: neither tried nor failed.

    Counts ``<plural>`` (every endpoint tried; ``plural`` defaults to ``<kind>s``) and
    ``<plural>_failed``; the caller counts what the work did. The knobs keep a backend's own
    words, never its own rule: ``what`` names the endpoints in messages ("Exchange server");
    ``on_failure(endpoint, exc, reason)`` records a failure where the backend keeps it (a sync
    row, an alert); ``skip_as(name, reason) -> (reason, record)`` words the summary's entry;
    ``message(outcome, tried)`` words the all-failed error.
    """
    label = what or kind
    plural = plural or f"{kind}s"
    report.zero(plural, f"{plural}_failed")
    outcome = Outcome()
    endpoints = list(endpoints)
    for endpoint in endpoints:
        if stop is not None and stop():
            outcome.deferred.append(name(endpoint))
            continue
        report.add(plural)
        try:
            result = work(endpoint)
        except Exception as exc:  # noqa: BLE001 - sorted below: the backend's errors are the endpoint's
            why = reason(exc) if reason is not None else None
            if why is None and expected and isinstance(exc, expected):
                why = f"{type(exc).__name__}: {first_line(exc)}"
            if why is None:
                raise
            who = name(endpoint)
            report.add(f"{plural}_failed")
            entry = (why.splitlines()[0][:300] if why else type(exc).__name__, f"{kind} {who}")
            report.skip(*(skip_as(who, why) if skip_as is not None else entry))
            outcome.failed.append(who)
            outcome.errors[who] = why
            if log is not None:
                log.warning("%s %s failed: %s", label, who, why)
            if on_failure is not None:
                on_failure(endpoint, exc, why)
        else:
            outcome.answered.append(endpoint)
            outcome.results.append(result)
    if outcome.deferred:
        report.add(f"{plural}_deferred", len(outcome.deferred))
    tried = len(endpoints) - len(outcome.deferred)
    if tried and not outcome.answered:
        text = message(outcome, tried) if message is not None else (
            f"every {label} failed ({tried}): " + "; ".join(f"{w}: {e}" for w, e in outcome.errors.items()))
        raise everything_failed(text)
    return outcome


class PartsFailed(RuntimeError):
    """A step made of independent parts had at least one fail; the others ran to the end first."""


def run_parts(parts: Iterable[tuple[str, Callable[[], dict]]], *, what: str, log: Any = None) -> dict:
    """Run a step's independent parts (each on its own backend), all of them whatever one does.

    One step of the seed sometimes covers two backends (O365 and VPS threshold alerts; SIP and Lync
    call records): a failing half must not starve the other, yet the task must fail so Airflow
    retries it and alerts. Each part's summary is kept under its name (a failed one as its error);
    then :class:`PartsFailed` names every part that failed.
    """
    summary: dict = {}
    failures = []
    for name, run in parts:
        try:
            summary[name] = run()
        except Exception as exc:  # noqa: BLE001 - the other parts still run; raised below
            failures.append(f"{name}: {type(exc).__name__}: {first_line(exc)}")
            summary[name] = {"error": first_line(exc, 500)}
            if log is not None:
                log.exception("%s %s failed", name, what)
    if failures:
        raise PartsFailed(f"{what} failed — " + "; ".join(failures))
    return summary
