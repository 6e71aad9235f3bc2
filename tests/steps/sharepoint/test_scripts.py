"""The SharePoint scripts as text: what a reviewer checks by eye, checked on every run. They use the
SharePoint snap-in's real cmdlets but have not run on a real farm; the PSRP tests assert what is sent."""

from __future__ import annotations

import re

import pytest

from panelflow.hooks.powershell import script_names, script_text
from steps.sharepoint.records import declared_parameters

SHAREPOINT = [name for name in script_names() if name.startswith("sharepoint/")]
SNAPIN_CMDLETS = {"Get-SPSite", "New-SPSite", "Set-SPSite", "Remove-SPSite", "Get-SPFarm"}
PARAMETERS = {"sharepoint/create_site": {"Url", "OwnerAlias", "SecondaryOwnerAlias", "Template", "Name",
                                        "MaxSizeBytes", "WarningSizeBytes"},
              "sharepoint/set_site": {"Url", "MaxSizeBytes", "WarningSizeBytes", "LockState"},
              "sharepoint/remove_site": {"Url"}, "sharepoint/get_site_collections": {"WebApplication"},
              "sharepoint/get_farm": set()}


def test_the_scripts_the_steps_run_exist():
    assert SHAREPOINT == sorted(PARAMETERS)


@pytest.mark.parametrize("name", SHAREPOINT)
def test_values_arrive_as_parameters_and_answers_as_json(name):
    text = script_text(name)
    assert text.startswith("# ")                                   # says what it does, for the admin reading it
    assert declared_parameters(name) == PARAMETERS[name]
    assert "$ErrorActionPreference = 'Stop'" in text              # a cmdlet's error fails the script
    assert "Add-PSSnapin Microsoft.SharePoint.PowerShell" in text
    assert "ConvertTo-Json -InputObject @(" in text
    used = set(re.findall(r"\b((?:Get|New|Set|Remove)-SP[A-Za-z]+)\b", text))
    assert used and used <= SNAPIN_CMDLETS, used
    for forbidden in ("Invoke-Expression", "iex ", "[scriptblock]::Create", "Add-Type"):
        assert forbidden not in text, forbidden


def test_every_site_object_is_disposed():
    """An SPSite holds unmanaged memory on the farm server: each script that gets one disposes of it."""
    for name in SHAREPOINT:
        text = script_text(name)
        assert ("Get-SPSite" not in text) or ".Dispose()" in text, name
