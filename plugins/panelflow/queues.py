"""Panel-database queues that wake daemon threads.

A daemon thread names one of these in its schedule; its first task defers in the triggerer and
polls the matching query until it finds pending rows. Kept as data (table, filter column, value)
rather than SQL strings so the trigger builds one parameterised statement for all of them.
"""

from __future__ import annotations

from typing import NamedTuple


class PanelQueue(NamedTuple):
    table: str
    key_column: str
    keys: tuple[str, ...]   # a row whose key_column is any of these wakes the daemon
    status_column: str = "status"
    pending: str = "pending"


_GROUP_ACTION_BACKENDS = (
    "general", "sip", "sp", "crm", "lync", "ad", "exchange", "vps", "o365", "mailbox_permissions",
)
# GroupActionWorkGeneral also works the Hostmatic database-login jobs GroupActionWorkAD queues
_ALSO_WAKES = {"general": ("hostmatic",)}

QUEUES: dict[str, PanelQueue] = {
    f"group_actions.{backend}": PanelQueue("group_action_jobs", "backend", (backend, *_ALSO_WAKES.get(backend, ())))
    for backend in _GROUP_ACTION_BACKENDS
}
