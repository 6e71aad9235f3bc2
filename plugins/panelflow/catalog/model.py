"""The catalog's typed shape.

Plain data validated once: every constraint an operator could get wrong in YAML (unknown keys,
periods over an hour, bad times or zones, dangling references, cycles) is rejected here with the
field that caused it, so the DAG factory can trust what it is given.
"""

from __future__ import annotations

import re
import zoneinfo
from datetime import date
from functools import cached_property
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SNAKE = r"^[a-z][a-z0-9_]*$"
HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


def _check_timezone(value: str | None) -> str | None:
    if value is None:
        return value
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {value!r} (use an IANA name such as Europe/London)") from None
    return value


def _check_emails(values: list[str]) -> list[str]:
    for v in values:
        if not re.match(r"^[^@\s]+@[^@\s]+\.[^@\s]+$", v):
            raise ValueError(f"not an e-mail address: {v!r}")
    return values


class PeriodicSchedule(Strict):
    """JeraSoft "Periodical": every N minutes (N ≤ 60), shifted by ``align_to`` minutes."""

    kind: Literal["periodic"]
    every: int = Field(ge=1, le=60, description="period in minutes; longer periods use a fixed time")
    align_to: int = Field(default=0, ge=0)
    data_interval: bool = False

    @model_validator(mode="after")
    def _align_below_period(self) -> PeriodicSchedule:
        if self.align_to >= self.every:
            raise ValueError(f"align_to ({self.align_to}) must be smaller than every ({self.every})")
        return self


class IntervalSchedule(Strict):
    """MachPanel's "Update Time Interval": every so many hours or days, not tied to a clock time."""

    kind: Literal["interval"]
    hours: int = Field(default=0, ge=0, le=23 * 24)
    days: int = Field(default=0, ge=0, le=366)
    data_interval: bool = False

    @model_validator(mode="after")
    def _one_length(self) -> IntervalSchedule:
        if not (self.hours or self.days):
            raise ValueError("an interval needs hours or days greater than 0")
        return self


class FixedSchedule(Strict):
    """JeraSoft "Fixed Time": one or more run-at times a day in the catalog's (system) time zone."""

    kind: Literal["fixed"]
    at: list[str] = Field(min_length=1)
    timezone: str | None = None
    data_interval: bool = False

    _tz = field_validator("timezone")(_check_timezone)

    @field_validator("at")
    @classmethod
    def _times(cls, values: list[str]) -> list[str]:
        for value in values:
            if not isinstance(value, str) or not HHMM.match(value):
                raise ValueError(f"bad run-at time {value!r}: use HH:MM between 00:00 and 23:59")
        if len(set(values)) != len(values):
            raise ValueError(f"duplicate run-at times in {values}")
        return sorted(values)

    @model_validator(mode="after")
    def _one_time_for_interval(self) -> FixedSchedule:
        if self.data_interval and len(self.at) != 1:
            raise ValueError("data_interval: true needs exactly one run-at time (the run covers the day before it)")
        return self


class DaemonSchedule(Strict):
    """JeraSoft daemon service: always on, woken by pending rows of a panel-DB queue."""

    kind: Literal["daemon"]
    queue: str


class ManualSchedule(Strict):
    kind: Literal["manual"]


Schedule = Annotated[
    Union[PeriodicSchedule, IntervalSchedule, FixedSchedule, DaemonSchedule, ManualSchedule],
    Field(discriminator="kind"),
]


class Step(Strict):
    """A numbered sub-step of a thread. Without ``run`` it is declared but not built yet."""

    id: str = Field(pattern=SNAKE, max_length=200)
    number: str = Field(pattern=r"^\d+(\.\d+)*$")
    seed: str = Field(min_length=1)
    run: str | None = Field(default=None, pattern=r"^panelflow\.steps\.[a-z0-9_.]+\.[a-z_][a-z0-9_]*$")
    after: list[str] = []
    pool: str | None = None
    # The nodes this step may run on, when not the thread's: a PowerShell step of a thread that
    # otherwise runs on the master node goes to the remoting workers (its own Celery queue).
    nodes: list[str] = []
    # A step done once per item (a tenant, a server …): this function lists the items when the
    # run starts, and ``run`` becomes one mapped task instance per item (``item`` input),
    # as many at a time as the step's pool allows.
    map_over: str | None = Field(default=None, pattern=r"^panelflow\.steps\.[a-z0-9_.]+\.[a-z_][a-z0-9_]*$")
    # The words the Threads Manager shows for the counts this step reports: summary key → words
    # with ``{n}`` where the number goes ("{n} charges approved"). Whether the step really returns
    # the key is only known when it runs, so only the shape is checked here.
    labels: dict[str, str] = {}

    @field_validator("labels")
    @classmethod
    def _label_words(cls, values: dict[str, str]) -> dict[str, str]:
        for key, words in values.items():
            if not re.match(r"^[a-z][a-z0-9_]*$", key) or len(key) > 100:
                raise ValueError(f"label key {key!r} is not a summary key (snake_case, at most 100 characters)")
            if not isinstance(words, str) or "{n}" not in words:
                raise ValueError(f"label of {key!r} must be text with {{n}} where the number goes, got {words!r}")
            if len(words) > 120 or "\n" in words:
                raise ValueError(f"label of {key!r} must be one line of at most 120 characters")
            try:
                words.format(n=0)
            except (KeyError, IndexError, ValueError):
                raise ValueError(f"label of {key!r} may only use {{n}} in braces, got {words!r}") from None
        return values

    @property
    def implemented(self) -> bool:
        return self.run is not None


class Deadline(Strict):
    """A run not finished this long after its scheduled run-at time is late: one e-mail to the
    thread's owners, and the Threads Manager's health badge turns red."""

    after_run_at_minutes: int = Field(ge=1, le=24 * 60)


class Legacy(Strict):
    superseded_by: str
    note: str | None = None


class Thread(Strict):
    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9]*$")
    description: str = Field(min_length=1)
    legacy: Legacy | None = None
    domain: str | None = None
    tags: list[str] = []
    schedule: Schedule | None = None
    run_groups: list[str] = []
    nodes: list[str] = []
    priority: int | None = Field(default=None, ge=0, le=10)
    owners: list[str] | None = None
    alert_to: list[str] | None = None
    retries: int | None = Field(default=None, ge=0, le=10)
    timeout_minutes: int | None = Field(default=None, ge=1, le=24 * 60)
    deadline: Deadline | None = None
    steps: list[Step] = []

    @field_validator("alert_to")
    @classmethod
    def _emails(cls, values: list[str] | None) -> list[str] | None:
        return None if values is None else _check_emails(values)

    def runnable_steps(self) -> list[Step]:
        """Steps the DAG runs: built, and every step they need is built too.

        A built step whose input comes from an unbuilt one would work on missing data, so it
        waits with it (the catalog report lists it as blocked).
        """
        by_id = {s.id: s for s in self.steps}
        ok: dict[str, bool] = {}

        def runnable(step: Step, seen: frozenset = frozenset()) -> bool:
            if step.id not in ok:
                ok[step.id] = step.implemented and all(
                    a not in seen and a in by_id and runnable(by_id[a], seen | {step.id}) for a in step.after
                )
            return ok[step.id]

        return [s for s in self.steps if runnable(s)]

    @property
    def is_live(self) -> bool:
        return self.legacy is None

    @cached_property
    def dag_id(self) -> str:
        return dag_id_for(self.name)


def dag_id_for(name: str) -> str:
    """``Office365SyncWork`` → ``office365_sync_work``; ``SyncCSPOffers`` → ``sync_csp_offers``."""
    s = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", name)
    s = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", s)
    return s.lower()


class Defaults(Strict):
    retries: int = Field(default=2, ge=0, le=10)
    retry_delay_minutes: int = Field(default=5, ge=0)
    timeout_minutes: int = Field(default=60, ge=1)
    priority: int = Field(default=5, ge=0, le=10)


class GroupJobSettings(Strict):
    """MachPanel's Group Job Settings: how many group-action jobs may run at once."""

    threads_run_simultaneously: int = Field(default=4, ge=1, le=128)


class Settings(Strict):
    timezone: str = "UTC"
    start_date: date = date(2026, 1, 1)
    defaults: Defaults = Defaults()
    group_actions: GroupJobSettings = GroupJobSettings()

    _tz = field_validator("timezone")(_check_timezone)


class RunGroup(Strict):
    slots: int = Field(default=1, ge=1, le=1024)
    description: str = ""


class Domain(Strict):
    """A domain's owners (team names) and alert addresses.

    ``daily_digest``: one e-mail a day to ``alert_to`` with the day before's failures, the open
    failed actions and the domain's thread counts (panelflow.services.digest); off unless asked
    for, so no domain gets mail it did not choose. ``digest_after``: the local time (catalog
    time zone) from which that day's digest is queued — the night's runs are done by then.
    """

    owners: list[str] = Field(min_length=1)
    alert_to: list[str] = []
    daily_digest: bool = False
    digest_after: str = "06:00"

    @field_validator("alert_to")
    @classmethod
    def _emails(cls, values: list[str]) -> list[str]:
        return _check_emails(values)

    @field_validator("digest_after")
    @classmethod
    def _digest_time(cls, value: str) -> str:
        if not isinstance(value, str) or not HHMM.match(value):
            raise ValueError(f"bad digest_after time {value!r}: use HH:MM between 00:00 and 23:59")
        return value
