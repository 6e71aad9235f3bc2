"""ProvisioningWork's "Generate O365/CSP and VPS threshold alerts": both halves run, one failing
does not stop the other, and the step then fails naming it."""

from datetime import datetime, timedelta, timezone

import pytest

from panelflow.step import Interval

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=timezone.utc)
RUN = Interval(T0 - timedelta(hours=1), T0)


class _Log:
    def __init__(self):
        self.lines = []

    def info(self, msg, *args):
        self.lines.append(msg % args if args else msg)

    warning = info

    def exception(self, msg, *args):
        self.lines.append("EXC " + (msg % args if args else msg))


def test_both_halves_report(panel_db, sql):
    from panelflow.steps.provisioning import generate_threshold_alerts

    sql("TRUNCATE vps_threshold_alerts, csp_licence_alerts RESTART IDENTITY CASCADE")
    summary = generate_threshold_alerts(panel_db, RUN, {}, _Log())
    assert set(summary) == {"o365_csp", "vps"}
    assert summary["o365_csp"]["alerts_opened"] == 0 and summary["vps"]["alerts_opened"] == 0


def test_a_failing_half_does_not_stop_the_other(panel_db, monkeypatch):
    from panelflow.steps.hyperv import thresholds as hyperv
    from panelflow.steps.microsoft365 import licence_alerts as partner_center
    from panelflow.steps.provisioning import generate_threshold_alerts

    ran = []
    monkeypatch.setattr(partner_center, "generate_threshold_alerts", lambda *a: ran.append("o365") or {"ok": 1})

    def broken(*args):
        raise ConnectionError("panel DB went away")

    monkeypatch.setattr(hyperv, "generate_vps_threshold_alerts", broken)
    log = _Log()
    with pytest.raises(RuntimeError, match="vps: ConnectionError: panel DB went away"):
        generate_threshold_alerts(panel_db, RUN, {}, log)
    assert ran == ["o365"] and any(line.startswith("EXC vps") for line in log.lines)
