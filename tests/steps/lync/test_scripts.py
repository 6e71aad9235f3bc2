"""The Lync scripts as text: what a reviewer checks by eye, checked on every run (they have not run
on a real Lync / Skype for Business server; the PSRP tests assert what is sent to them)."""

from __future__ import annotations

import re

import pytest

from panelflow.hooks.powershell import script_names, script_text
from steps.lync.records import declared_parameters

LYNC = [name for name in script_names() if name.startswith("lync/")]


def test_the_scripts_the_steps_run_exist():
    assert LYNC == ["lync/enable_user", "lync/get_cdr_calls", "lync/get_pool_users", "lync/grant_user_policy",
                    "lync/remove_user", "lync/set_line_uri", "lync/set_user_state"]


@pytest.mark.parametrize("name", LYNC)
def test_values_arrive_as_parameters_and_answers_as_json(name):
    text = script_text(name)
    assert text.startswith("# ")                                  # says what it does, for the admin reading it
    assert declared_parameters(name)                              # a param() block
    assert "$ErrorActionPreference = 'Stop'" in text             # a cmdlet's error fails the script
    assert "ConvertTo-Json -InputObject @(" in text
    for forbidden in ("Invoke-Expression", "iex ", "[scriptblock]::Create", "Invoke-Sqlcmd", "Add-Type"):
        assert forbidden not in text, forbidden


def test_the_cdr_query_takes_every_value_as_a_typed_sql_parameter():
    text = script_text("lync/get_cdr_calls")
    query = re.search(r"@'\n(.*?)\n'@", text, re.S).group(1)
    used = set(re.findall(r"@(\w+)", query))
    added = set(re.findall(r"Parameters\.Add\('@(\w+)'", text)) | {
        n for n in re.findall(r"foreach \(\$name in ([^)]*)\)", text)[0].replace("'", "").replace(" ", "").split(",")}
    assert used == added == {"MaxRows", "EndedFrom", "EndedTo", "AfterEnd", "AfterIdTime", "AfterIdSeq"}
    assert "$" not in query                                       # no PowerShell value expanded into the T-SQL
    assert "SqlConnectionStringBuilder" in text                   # nor into the connection string
    for table in ("dbo.VoIPDetails", "dbo.SessionDetails", "dbo.Users", "dbo.Phones"):
        assert table in query
