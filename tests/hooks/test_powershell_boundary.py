"""The PowerShell hook at the PSRP boundary: values travel as PSRP parameters, errors and transport
failures are told apart, and the output is parsed as the scripts promise."""

import pytest

INJECTION = "x'; Remove-Mailbox -Identity * -Confirm:$false; '"


@pytest.fixture
def exchange_conn(recorded_powershell, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_EXCH_TEST", recorded_powershell.connection("exch01.test", auth="ntlm"))
    return "exch_test"


def test_values_travel_as_parameters_never_in_the_script(recorded_powershell, exchange_conn):
    from panelflow.hooks.powershell import PowerShellHook, script_text

    recorded_powershell.answer("diagnostics/echo_parameters",
                               lambda sent: [{"Identity": sent.parameters["Identity"], "Limit": sent.parameters["Limit"]}])
    rows = PowerShellHook(exchange_conn).run_script("diagnostics/echo_parameters", {"Identity": INJECTION, "Limit": 3})
    assert rows == [{"Identity": INJECTION, "Limit": 3}]
    (sent,) = recorded_powershell.sent
    assert sent.is_script and sent.script == "diagnostics/echo_parameters"
    assert sent.command == script_text("diagnostics/echo_parameters")      # the file, byte for byte
    assert sent.parameters == {"Identity": INJECTION, "Limit": 3}            # typed: Limit is an Int32
    assert '<I32 N="V">3</I32>' in sent.clixml
    assert sent.clixml.count("Remove-Mailbox") == 1 and sent.conn_host == "exch01.test"


def test_script_errors_transport_failures_and_bad_output(recorded_powershell, exchange_conn):
    from panelflow.hooks.powershell import (PowerShellHook, PowerShellOutputError, PowerShellScriptError,
                                            PowerShellUnavailable)

    hook = PowerShellHook(exchange_conn)
    recorded_powershell.answer("diagnostics/echo_parameters", error="Couldn't find object \"nobody\".", times=1)
    with pytest.raises(PowerShellScriptError, match="Couldn't find object"):
        hook.run_script("diagnostics/echo_parameters", {"Identity": "nobody"})
    recorded_powershell.answer("diagnostics/echo_parameters", timeout=True, times=1)
    with pytest.raises(PowerShellUnavailable, match="Read timed out"):
        hook.run_script("diagnostics/echo_parameters", {"Identity": "a"})
    recorded_powershell.answer("diagnostics/echo_parameters", raw="WARNING: not json", times=1)
    with pytest.raises(PowerShellOutputError, match="not JSON"):
        hook.run_script("diagnostics/echo_parameters", {"Identity": "a"})
    recorded_powershell.answer("diagnostics/echo_parameters", {"Identity": "one"}, times=1)   # a lone object
    assert hook.run_script("diagnostics/echo_parameters", {"Identity": "a"}) == [{"Identity": "one"}]


def test_one_runspace_pool_for_many_scripts(recorded_powershell, exchange_conn):
    from panelflow.hooks.powershell import PowerShellHook

    recorded_powershell.answer("diagnostics/echo_parameters", lambda sent: [sent.parameters["Identity"]])
    with PowerShellHook(exchange_conn) as hook:
        assert [hook.run_script("diagnostics/echo_parameters", {"Identity": n})[0] for n in "abc"] == ["a", "b", "c"]
    assert [c.parameters["Identity"] for c in recorded_powershell.calls("diagnostics/echo_parameters")] == list("abc")


def test_unknown_extras_are_refused(recorded_powershell, monkeypatch):
    from airflow.exceptions import AirflowException

    from panelflow.hooks.powershell import PowerShellHook

    monkeypatch.setenv("AIRFLOW_CONN_EXCH_BAD", recorded_powershell.connection("exch01.test", shell="exchange"))
    with pytest.raises(AirflowException, match="Unexpected extra configuration keys: shell"):
        PowerShellHook("exch_bad").run_script("diagnostics/echo_parameters", {"Identity": "a"})


def test_windows_powershell_value_shapes():
    from datetime import datetime, timezone

    from panelflow.hooks.powershell import byte_count, ps_datetime

    assert ps_datetime("/Date(1700000000000)/") == datetime(2023, 11, 14, 22, 13, 20, tzinfo=timezone.utc)
    assert ps_datetime("2026-11-21T10:00:00.0000000Z") == datetime(2026, 11, 21, 10, tzinfo=timezone.utc)
    assert byte_count("1.295 GB (1,390,739,456 bytes)") == 1_390_739_456
    assert byte_count(42) == 42 and byte_count(None) is None


def test_lists_and_tables_as_parameters(recorded_powershell, exchange_conn):
    from panelflow.hooks.powershell import PowerShellHook

    recorded_powershell.answer("diagnostics/echo_parameters", lambda sent: [sent.parameters])
    sent = {"Identity": "a", "Add": ["x@example.test", "y@example.test"], "Remove": ["z@example.test"],
            "Settings": {"MaxSendSize": 35_651_584}}
    assert PowerShellHook(exchange_conn).run_script("diagnostics/echo_parameters", sent) == [sent]
