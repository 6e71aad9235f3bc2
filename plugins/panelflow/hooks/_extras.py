"""Typed settings from an Airflow connection's extras, shared by every panelflow hook.

Extras arrive as JSON typed by hand in the connection form, so ``"30"``, ``30`` and ``30.0`` all
mean thirty seconds and ``"yes"``/``true``/``1`` all mean on. One reader keeps those spellings
meaning the same thing in every hook, and turns a value that is not a number into an error naming
the connection and the extra instead of a bare ``could not convert string to float``.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, TypeVar

N = TypeVar("N", int, float)


def flag(value: Any) -> bool:
    """An on/off extra: booleans, or the strings ``1``/``true``/``yes``/``on`` (any case)."""
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def extra_number(conn_id: str, extra: Mapping[str, Any], key: str, default: N, *, kind: Callable[[Any], N] = float,
           minimum: N | None = None) -> N:
    """Extra ``key`` as ``kind`` (``default`` when absent), raised to ``minimum`` if below it.

    Out-of-range values are raised, not refused, because that is how the hooks have always
    treated them (``retries: 0`` still makes one attempt).
    """
    raw = extra.get(key, default)
    try:
        value = kind(raw)
    except (TypeError, ValueError):
        raise ValueError(f"connection {conn_id!r}: extra {key!r} must be a number, not {raw!r}") from None
    return max(minimum, value) if minimum is not None else value


def optional_number(conn_id: str, extra: Mapping[str, Any], key: str) -> float | None:
    """Extra ``key`` as seconds, or ``None`` when the connection leaves it to the caller."""
    return None if extra.get(key) is None else extra_number(conn_id, extra, key, 0.0)
