"""PowerShell remoting to the Windows backends (Exchange, Hyper-V hosts), running our own scripts.

Built on the Airflow PSRP provider's :class:`PsrpHook` (pypsrp): the connection (conn type
``psrp``) holds host, login, password and the provider's extras (``auth``, ``ssl``,
``cert_validation``, ``configuration_name``, ``read_timeout`` …); nothing else configures it.

Why scripts and not bare cmdlets. Each backend operation is a ``.ps1`` file in
``include/powershell/<backend>/`` with a ``param()`` block; :meth:`PowerShellHook.run_script` sends
the file's text with ``AddScript`` and every value with ``AddParameter``. Values therefore travel
as PSRP parameter objects, never inside the script text: a mailbox named
``x'; Remove-Mailbox -Identity *`` reaches Exchange as that literal string. (The tests decode the
CreatePipeline message pypsrp puts on the wire and check exactly that.)

Exchange: Exchange's own remoting endpoint (``Microsoft.Exchange``) is a NoLanguage runspace, where
no script (nor ``ConvertTo-Json``) may run; our scripts therefore connect to the Exchange server's
standard endpoint (``Microsoft.PowerShell``) and load the Exchange snap-in themselves
(``Add-PSSnapin Microsoft.Exchange.Management.PowerShell.SnapIn``), as Exchange's own scheduled
scripts do.

Output: every script ends in ``ConvertTo-Json -InputObject @(…) -Depth N -Compress``, so the answer
is one JSON text (an array, even of one item) parsed here into plain records; steps validate those
into typed records with :func:`parse_records`, where a bad record is reported and skipped.
Dates are emitted as ISO-8601 by the scripts; ``"/Date(ms)/"`` (Windows PowerShell 5.1's form for an
unconverted DateTime) and ``"1.2 GB (1,288,490,188 bytes)"`` (a serialized Exchange
ByteQuantifiedSize) are understood too (:func:`ps_datetime`, :func:`byte_count`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any

from airflow.providers.microsoft.psrp.hooks.psrp import PsrpHook

SCRIPTS = Path(__file__).resolve().parents[3] / "include" / "powershell"


class PowerShellError(Exception):
    """A PowerShell call failed."""


class PowerShellScriptError(PowerShellError):
    """The script ran and wrote errors (``-ErrorAction Stop`` or a terminating error): the backend
    refused the operation as asked. ``errors`` holds the error records' messages."""

    def __init__(self, script: str, errors: list[str]):
        self.script, self.errors = script, errors
        super().__init__(f"{script}: " + "; ".join(errors or ["the script reported an error"]))


class PowerShellUnavailable(PowerShellError):
    """The backend could not be reached, refused the credentials or timed out: worth retrying later."""


class PowerShellOutputError(PowerShellError):
    """The script's output is not the JSON it promises (a broken script or a changed cmdlet)."""


@lru_cache(maxsize=None)
def script_text(name: str) -> str:
    """The text of ``include/powershell/<name>.ps1`` (``name`` like ``exchange/get_database_stats``)."""
    if not re.fullmatch(r"[a-z0-9_]+(/[a-z0-9_]+)*", name):
        raise ValueError(f"bad script name {name!r}")
    path = SCRIPTS / f"{name}.ps1"
    if not path.is_file():
        raise FileNotFoundError(f"no PowerShell script {path}")
    return path.read_text(encoding="utf-8")


def script_names() -> list[str]:
    return sorted(str(p.relative_to(SCRIPTS).with_suffix("")) for p in SCRIPTS.rglob("*.ps1"))


class PowerShellHook(PsrpHook):
    """PSRP to one Windows server, running ``include/powershell`` scripts with real parameters."""

    conn_type = "psrp"
    hook_name = "PowerShell Remoting (panelflow scripts)"
    default_conn_name = "psrp_default"

    def __init__(self, psrp_conn_id: str = default_conn_name, operation_timeout: int | None = None, **kwargs):
        super().__init__(psrp_conn_id, operation_timeout=operation_timeout, **kwargs)

    def run_script(self, name: str, parameters: Mapping[str, Any] | None = None) -> list[Any]:
        """Run script ``name`` with ``parameters`` and return its JSON output as a list of records.

        ``None`` values are not sent (the script's default applies). Raises
        :class:`PowerShellScriptError`, :class:`PowerShellUnavailable` or :class:`PowerShellOutputError`.
        """
        from airflow.exceptions import AirflowException

        text = script_text(name)
        holder: list = []
        try:
            with self.invoke() as ps:
                holder.append(ps)
                ps.add_script(text)
                for key, value in (parameters or {}).items():
                    if value is not None:
                        ps.add_parameter(key, value)
        except AirflowException:
            ps = holder[0] if holder else None
            if ps is not None and ps.streams.error:
                raise PowerShellScriptError(name, [_error_text(e) for e in ps.streams.error]) from None
            raise   # the connection's configuration (unknown extras …): not worth retrying
        except PowerShellError:
            raise
        except Exception as exc:  # transport: connection refused, TLS, auth, WSMan fault, read timeout
            if _is_transport_error(exc):
                raise PowerShellUnavailable(f"{name} on {self.conn_id}: {type(exc).__name__}: {exc}") from exc
            raise
        return parse_output(name, holder[0].output)


def open_powershell(conn_id: str) -> PowerShellHook:
    """A :class:`PowerShellHook` with its runspace pool open, so every script a step sends to one
    server reuses it. A server that cannot be reached raises :class:`PowerShellUnavailable`."""
    hook = PowerShellHook(conn_id)
    try:
        hook.__enter__()
    except Exception as exc:
        if _is_transport_error(exc):
            raise PowerShellUnavailable(f"{conn_id}: {type(exc).__name__}: {exc}") from exc
        raise
    return hook


def close_powershell(hook: PowerShellHook, log=None) -> None:
    """Close the runspace pool; a server that hangs up while closing costs nothing but a log line
    (the work is done, and closing a broken pool must not hide the real outcome)."""
    try:
        hook.__exit__(None, None, None)
    except Exception as exc:  # noqa: BLE001 - closing is best effort
        if log is not None:
            log.warning("closing the PowerShell session %s: %s", hook.conn_id, exc)


@contextmanager
def powershell_session(conn_id: str, log=None) -> Iterator[PowerShellHook]:
    hook = open_powershell(conn_id)
    try:
        yield hook
    finally:
        close_powershell(hook, log)


def _error_text(record) -> str:
    try:
        text = str(record)
    except Exception:  # noqa: BLE001 - pypsrp can fail to render some records
        text = ""
    reason = getattr(record, "reason", None)
    return text or str(reason or "error")


def _is_transport_error(exc: BaseException) -> bool:
    import requests
    from pypsrp.exceptions import AuthenticationError, WinRMError, WinRMTransportError, WSManFaultError

    return isinstance(exc, (requests.exceptions.RequestException, AuthenticationError, WinRMError,
                            WinRMTransportError, WSManFaultError, ConnectionError, TimeoutError))


def parse_output(name: str, output: Iterable[Any]) -> list[Any]:
    """The script's output stream (JSON text, possibly split over several strings) as a list."""
    text = "".join(str(o) for o in output if o is not None).strip()
    if not text:
        return []
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise PowerShellOutputError(f"{name}: output is not JSON ({exc}): {text[:200]!r}") from None
    if isinstance(data, dict):
        return [data]
    if not isinstance(data, list):
        raise PowerShellOutputError(f"{name}: expected a JSON array or object, got {type(data).__name__}")
    return data


_MS_DATE = re.compile(r"^/Date\((-?\d+)([+-]\d{4})?\)/$")


def ps_datetime(value: Any) -> datetime | None:
    """ISO-8601, ``/Date(ms)/`` or a ``{"value": "/Date(ms)/", "DateTime": "…"}`` object → aware datetime."""
    if value is None or value == "":
        return None
    if isinstance(value, dict):
        value = value.get("value", value.get("DateTime"))
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    text = str(value).strip()
    m = _MS_DATE.match(text)
    if m:
        return datetime.fromtimestamp(int(m.group(1)) / 1000, tz=timezone.utc)
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


_BYTES = re.compile(r"\(([\d,.\s]+) bytes\)")


def byte_count(value: Any) -> int | None:
    """An integer, numeric string or serialized ByteQuantifiedSize (``"1.2 GB (1,288,490,188 bytes)"``)."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ValueError("a boolean is not a byte count")
    if isinstance(value, (int, float)):
        return int(value)
    text = str(value)
    m = _BYTES.search(text)
    if m:
        return int(re.sub(r"[^\d]", "", m.group(1)))
    return int(float(text))


def parse_records(model, rows: Iterable[Any], report=None, what: str = "record") -> list:
    """Validate each row into ``model`` (a pydantic model); a bad row is reported and skipped."""
    from pydantic import ValidationError

    records = []
    for i, row in enumerate(rows):
        try:
            records.append(model.model_validate(row))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ())) or "?"
            name = row.get("Name") or row.get("Identity") if isinstance(row, dict) else None
            message = f"{what} {name or '#' + str(i)}: {where}: {first.get('msg')}"
            if report is None:
                raise ValueError(message) from None
            report.skip(message, f"{what} {name or i}")
    return records
