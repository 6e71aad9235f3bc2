"""The verification both SSL steps share (steps/ssl/_backend.verify), on certificates the test CA
signs: what a vendor could hand back wrong besides the sandboxes' switches — a chain without its
intermediate, a CA certificate in the leaf's place, something that is not a certificate."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from panelflow.steps.ssl._backend import PendingOrder, Refused, verify
from sandbox.test_ca import TestCA, csr_for, pem

CLOCK = datetime(2026, 11, 20, 9, 0, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def issued():
    ca = TestCA(not_before=datetime(2026, 1, 1, tzinfo=timezone.utc))
    _, csr = csr_for("*.shop.example.test", ["shop.example.test"])
    order = PendingOrder(id=1, vendor_order_id="1", common_name="*.shop.example.test", sans=["shop.example.test"],
                         csr=csr)
    leaf, intermediate, root = ca.issue(csr, names=["*.shop.example.test", "shop.example.test"], days=365, at=CLOCK)
    return order, pem([leaf]), pem([intermediate]), pem([root]), root


def test_a_good_wildcard_certificate_verifies_up_to_the_root(issued):
    order, leaf, intermediate, root_pem, root = issued
    verified = verify(order, leaf, (intermediate, root_pem), roots=[root], clock=CLOCK)
    assert verified.chain_pem == intermediate + root_pem     # the path found, issuer first
    assert verified.not_before <= CLOCK < verified.not_after and len(verified.fingerprint) == 64


def test_a_chain_without_its_intermediate_is_refused(issued):
    order, leaf, _, root_pem, root = issued
    with pytest.raises(Refused, match="the chain does not verify to a trusted root"):
        verify(order, leaf, (root_pem,), roots=[root], clock=CLOCK)


def test_a_ca_certificate_in_the_leafs_place_is_refused(issued):
    order, _, intermediate, root_pem, root = issued
    with pytest.raises(Refused, match="public key is not the CSR's"):
        verify(order, intermediate, (root_pem,), roots=[root], clock=CLOCK)


def test_what_is_not_a_certificate_is_refused(issued):
    order, _, intermediate, _, root = issued
    with pytest.raises(Refused, match="not a certificate"):
        verify(order, "<html>maintenance</html>", (intermediate,), roots=[root], clock=CLOCK)
