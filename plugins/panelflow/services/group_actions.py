"""The group-action queue (``group_action_jobs``, 0001): one processor loop for every backend.

MachPanel queues "group actions" (create a mailbox, add a user to a group, start a VM …) and a
processor thread per backend works them. Here a processor step calls :func:`process_group_actions`
with its backend name and a handler; the pool ``group_actions`` (MachPanel's "threads to run
simultaneously") bounds how many processor tasks run at once across all backends.

Claiming. Jobs are taken **one at a time**, by priority (0 first) then id, with ``FOR UPDATE SKIP
LOCKED``, set ``running`` (``attempts`` + 1, ``started_at``) and committed before the handler runs:
two processors racing on one queue never take the same job, and each takes the next free one as
soon as it is done with its own, so racing processors share the queue instead of one grabbing a
batch. At most ``jobs_per_run`` jobs per call: the loop is bounded.

Outcomes, committed as soon as known:

- the handler returns a dict → ``succeeded`` with that ``result``;
- :class:`JobRejected` (bad payload, unknown object, the backend refused the request as made) →
  ``failed`` with the error, not retried;
- :class:`JobDeferred` (backend unreachable, timed out, throttled) → back to ``pending`` with the
  error, retried by a later run until ``max_attempts``, then ``failed``;
- any other exception is a bug in the handler: the job is ``failed`` with the exception's text
  and the queue goes on (one poisoned job never blocks the rest).

A worker killed mid-job leaves it ``running``; a later run re-takes it once it has been running for
``stale_minutes`` (the thread's task timeout). Handlers must therefore be idempotent: look the
object up before creating it, set states rather than toggling them.

Secrets in a payload (``password`` …) are removed when the job is finished; they are kept only
while the job may be retried. The clock is the run's ``interval.end``, never ``now()``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any

from panelflow.step import StepReport, first_line

JOBS_PER_RUN = 50
MAX_ATTEMPTS = 5
STALE_MINUTES = 60
SECRET_KEYS = ("password", "new_password", "secret")


class JobRejected(Exception):
    """The job cannot be done as queued (bad payload, unknown object or action): failed, not retried."""


class JobDeferred(Exception):
    """The backend could not be reached or timed out: the job is retried by a later run."""


class Payload:
    """A job's payload read field by field, one rule for every backend: a field that is missing
    (when required) or of the wrong kind rejects the job (:class:`JobRejected`) naming the field.

    The strict rule of the four copies it replaced: text is a JSON string (a number is refused,
    not turned into text), stripped, at most ``limit`` characters and free of control characters;
    a flag is a JSON boolean; a number is a JSON integer (not a boolean, not a digit string),
    within ``low``…``high`` when given.
    """

    def __init__(self, data: Any):
        if not isinstance(data, dict):
            raise JobRejected("payload is not an object")
        self.data = data

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def text(self, key: str, required: bool = True, limit: int = 255) -> str | None:
        value = self.data.get(key)
        if value is None or (isinstance(value, str) and not value.strip()):
            if required:
                raise JobRejected(f"payload has no {key!r}")
            return None
        if not isinstance(value, str):
            raise JobRejected(f"payload {key!r} is not a string")
        value = value.strip()
        if len(value) > limit or any(ord(ch) < 32 for ch in value):
            raise JobRejected(f"payload {key!r} is longer than {limit} characters or holds control characters")
        return value

    def flag(self, key: str, default: bool) -> bool:
        value = self.data.get(key, default)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise JobRejected(f"payload {key!r} is not true or false")
        return value

    def integer(self, key: str, low: int | None = None, high: int | None = None, default: int | None = None,
                required: bool = False) -> int | None:
        value = self.data.get(key, default)
        if value is None:
            if required:
                raise JobRejected(f"payload has no {key!r}")
            return None
        if isinstance(value, bool) or not isinstance(value, int) or \
                (low is not None and value < low) or (high is not None and value > high):
            bounds = f" from {low}" if low is not None else ""
            bounds += f" to {high}" if high is not None else ""
            raise JobRejected(f"payload {key!r} must be a whole number{bounds}")
        return value


class PowerShellSessions:
    """The PowerShell sessions of one group-action run — one per server, reused by all its jobs —
    and the one rule for what a server's answer means for a job, shared by every Windows backend:

    - the script's own error, or an answer that is not the JSON it promises: the server refused the
      job as made → :class:`JobRejected` with the server's words;
    - the server unreachable, timing out, or its connection missing/misconfigured (fixable, so
      retried) → :class:`JobDeferred`; a session that failed is dropped (the next job opens a fresh
      one), and once a server has failed ``failures_allowed`` times (1: one timeout per server per
      run, not one per job) every later job for it in this run is deferred untried.
    """

    def __init__(self, log=None, failures_allowed: int = 1):
        self.log = log
        self.hooks: dict[str, Any] = {}
        self.down: dict[str, str] = {}
        self.failures: dict[str, int] = {}
        self.failures_allowed = max(1, failures_allowed)

    def run(self, server: str, conn_id: str, script: str, parameters: dict) -> list:
        """Run ``script`` on ``server`` (reached through ``conn_id``); its JSON records."""
        from airflow.exceptions import AirflowException

        from panelflow.hooks.powershell import (PowerShellOutputError, PowerShellScriptError, PowerShellUnavailable,
                                                close_powershell, open_powershell)

        self.check(server, conn_id)
        try:
            hook = self.hooks.get(conn_id)
            if hook is None:
                hook = self.hooks[conn_id] = open_powershell(conn_id)
            return hook.run_script(script, parameters)
        except PowerShellScriptError as exc:
            raise JobRejected(f"{server}: {'; '.join(exc.errors) or 'the script failed'}") from None
        except PowerShellOutputError as exc:
            raise JobRejected(f"{server}: {exc}") from None
        except PowerShellUnavailable as exc:
            dropped = self.hooks.pop(conn_id, None)     # a pool that timed out is not reused
            if dropped is not None:
                close_powershell(dropped, self.log)
            raise self.unreachable(server, conn_id, exc) from None
        except AirflowException as exc:
            raise self.unreachable(server, conn_id, exc, f"connection {conn_id}: ") from None

    def check(self, server: str, conn_id: str) -> None:
        """Defer a job for a server given up on earlier in this run, without trying it again."""
        if conn_id in self.down:
            raise JobDeferred(f"{server} not tried: unreachable earlier in this run ({self.down[conn_id]})")

    def unreachable(self, server: str, conn_id: str, exc: BaseException, prefix: str = "") -> JobDeferred:
        """Count the server's failure (down for the rest of the run at ``failures_allowed``); the job's
        outcome (raise it)."""
        failures = self.failures[conn_id] = self.failures.get(conn_id, 0) + 1
        if failures >= self.failures_allowed:
            self.down[conn_id] = first_line(exc) if failures == 1 else \
                f"{failures} transport failures, the last: {first_line(exc)}"
        return JobDeferred(f"{server}: {prefix}{first_line(exc)}")

    def close(self) -> None:
        from panelflow.hooks.powershell import close_powershell

        for hook in self.hooks.values():
            close_powershell(hook, self.log)
        self.hooks.clear()


_CLAIM_ONE = """
WITH claim AS (
    SELECT id, status AS was FROM group_action_jobs
    WHERE backend = %(backend)s
      AND (status = 'pending' OR (status = 'running' AND started_at <= %(stale)s))
      AND id <> ALL(%(done)s::bigint[])        -- a job deferred by this run waits for the next run
    ORDER BY priority, id
    LIMIT 1
    FOR UPDATE SKIP LOCKED
)
UPDATE group_action_jobs j SET status = 'running', attempts = j.attempts + 1, started_at = %(at)s,
       finished_at = NULL
FROM claim WHERE j.id = claim.id
RETURNING j.id, j.action, j.payload, j.attempts, j.priority, claim.was
"""

_FINISH = """
UPDATE group_action_jobs SET status = %(status)s, result = %(result)s, error = %(error)s,
       finished_at = CASE WHEN %(status)s = 'pending' THEN NULL ELSE %(at)s END,
       payload = CASE WHEN %(status)s = 'pending' THEN payload ELSE payload - %(secrets)s::text[] END
WHERE id = %(id)s AND status = 'running'
"""

Handler = Callable[[str, dict], dict | None]


def process_group_actions(panel_db, backend: str, handler: Handler, interval, params=None, log=None, *,
                          actions: Iterable[str] | None = None, secret_keys: Iterable[str] = SECRET_KEYS,
                          report: StepReport | None = None, conn=None) -> dict:
    """Work ``backend``'s pending jobs through ``handler(action, payload) -> result``.

    ``actions``, when given, are the actions this backend knows: any other is failed without calling
    the handler. Params: ``jobs_per_run``, ``job_max_attempts``, ``job_stale_minutes``. ``conn``: an
    open autocommit connection the handler also uses (else one is opened here).
    """
    if conn is None:
        with panel_db.get_conn() as own:
            own.autocommit = True
            return _process(own, backend, handler, interval, params, log, actions, secret_keys, report)
    if not conn.autocommit:
        raise ValueError("the group-action queue needs an autocommit connection (each claim and outcome commits)")
    return _process(conn, backend, handler, interval, params, log, actions, secret_keys, report)


def _process(conn, backend, handler, interval, params, log, actions, secret_keys, report) -> dict:
    from psycopg.types.json import Jsonb

    params = params or {}
    at = interval.end
    limit = int(params.get("jobs_per_run", JOBS_PER_RUN))
    max_attempts = int(params.get("job_max_attempts", MAX_ATTEMPTS))
    stale = at - timedelta(minutes=int(params.get("job_stale_minutes", STALE_MINUTES)))
    known = set(actions) if actions is not None else None
    report = report or StepReport()
    for key in ("claimed", "reclaimed", "succeeded", "failed", "retry_later"):
        report.add(key, 0)
    done: list[int] = []
    for _ in range(limit):
        row = conn.execute(_CLAIM_ONE, {"backend": backend, "at": at, "stale": stale, "done": done}).fetchone()
        if row is None:
            break
        job_id, action, payload, attempts, priority, was = row
        done.append(job_id)
        report.add("claimed")
        if was == "running":
            report.add("reclaimed")
        payload = payload if isinstance(payload, dict) else {}
        status, result, error = "succeeded", None, None
        try:
            if known is not None and action not in known:
                raise JobRejected(f"unknown {backend} action {action!r}")
            result = handler(action, payload)
        except JobRejected as exc:
            status, error = "failed", str(exc) or type(exc).__name__
        except JobDeferred as exc:
            status, error = ("pending" if attempts < max_attempts else "failed"), str(exc) or type(exc).__name__
            if status == "failed":
                error = f"attempt {attempts} of {max_attempts}: {error}"
        except Exception as exc:  # noqa: BLE001 - one poisoned job must not stop the queue
            status, error = "failed", f"{type(exc).__name__}: {exc}"
        conn.execute(_FINISH, {"id": job_id, "status": status, "at": at, "error": error,
                               "result": Jsonb(result) if result is not None else None,
                               "secrets": list(secret_keys)})
        report.add({"pending": "retry_later"}.get(status, status))
        report.add(f"{action}:{status}")
        if status != "succeeded":
            report.skip(error.splitlines()[0][:300], f"job {job_id} ({action})")
        if log is not None:
            log.info("%s job %s (%s, priority %s): %s%s", backend, job_id, action, priority, status,
                     f" — {error}" if error else "")
    return report.as_dict()


def queue_job(conn, backend: str, action: str, payload: dict[str, Any], priority: int = 5) -> int:
    """Queue one job (tests, the panel and other steps use this)."""
    from psycopg.types.json import Jsonb

    return conn.execute("INSERT INTO group_action_jobs (backend, action, payload, priority) "
                        "VALUES (%s, %s, %s, %s) RETURNING id", (backend, action, Jsonb(payload), priority)).fetchone()[0]
