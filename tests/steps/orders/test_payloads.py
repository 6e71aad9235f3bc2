"""The order actions table against the backends' own processors, and template filling."""

from __future__ import annotations

import importlib

import pytest

from panelflow.steps.orders.payloads import ACTIONS, ItemRefused, check, render

# backend → (its processor module, the names of the action tuples it accepts)
PROCESSORS = {
    "ad": ("panelflow.steps.active_directory.jobs", ("ACTIONS",)),
    "exchange": ("panelflow.steps.exchange.jobs", ("ACTIONS",)),
    "vps": ("panelflow.steps.hyperv.jobs", ("ACTIONS",)),
    "o365": ("panelflow.steps.microsoft365.jobs", ("GRAPH_ACTIONS", "PARTNER_ACTIONS")),
    "sip": ("panelflow.steps.voice.jobs", ("ACTIONS",)),
    "lync": ("panelflow.steps.lync.jobs", ("ACTIONS",)),
    "general": ("panelflow.steps.hosting.jobs", ("GENERAL_ACTIONS",)),
}


@pytest.mark.parametrize("backend", sorted(ACTIONS))
def test_every_order_action_is_one_its_backend_processes(backend):
    module, names = PROCESSORS[backend]
    jobs = importlib.import_module(module)
    known = {action for name in names for action in getattr(jobs, name)}
    assert set(ACTIONS[backend]) <= known


def test_references_keep_their_json_type_and_reach_into_lists():
    payload = render({"customer_id": "{{customer_id}}", "members": ["{{ result:2.dn }}", "fixed"],
                      "deep": {"order": "{{order_id}}"}, "n": 3},
                     order_id=9, customer_id=41, subscription_id=None, depends_on=[2],
                     results={2: {"dn": "CN=x"}})
    assert payload == {"customer_id": 41, "members": ["CN=x", "fixed"], "deep": {"order": 9}, "n": 3}


def test_one_of_keys_and_missing_results_are_refused():
    check("exchange", "create_mailbox", {"mailbox_id": 1, "ad_user": "jdoe"})
    with pytest.raises(ItemRefused, match="no 'password' or 'ad_user'"):
        check("exchange", "create_mailbox", {"mailbox_id": 1})
    with pytest.raises(ItemRefused, match="is not an order action"):
        check("ad", "delete_user", {"user": "jdoe"})
    with pytest.raises(ItemRefused, match="item 1's job result has no 'object_guid'"):
        render({"ad_user": "{{result:1.object_guid}}"}, order_id=1, customer_id=1, subscription_id=None,
               depends_on=[1], results={1: None})
