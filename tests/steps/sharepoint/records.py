"""What the SharePoint scripts print on a farm (``ConvertTo-Json`` of their ``[pscustomobject]``s), and the
shared test helpers. These shapes follow the scripts; they have not been recorded on a real farm."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from pathlib import Path

from panelflow.step import Interval

SCRIPTS = Path(__file__).resolve().parents[3] / "include" / "powershell"
FARM1, FARM2 = "spfarm1.corp.example", "spfarm2.corp.example"

T0 = datetime(2026, 3, 2, 10, 40, tzinfo=timezone.utc)
GIB = 1024 ** 3
MIB = 1024 ** 2
HOSTILE = "x'; Remove-SPSite -Identity * -Confirm:$false; '"


def at(end=T0, minutes=60) -> Interval:
    return Interval(end - timedelta(minutes=minutes), end)


def on(host):
    return lambda sent: sent.conn_host == host


def farm_site(url, owner="CORP\\alice", secondary=None, quota=10 * GIB, used=2 * GIB, title="Team site",
              template="STS#3", lock="Unlock", hits=120, visits=40, site_id="3f1c2a0e-8d7b-4c6a-9e5f-1a2b3c4d5e6f"):
    return {"Url": url, "Id": site_id, "Title": title, "Owner": owner, "SecondaryOwner": secondary,
            "Template": template, "QuotaBytes": quota, "StorageUsedBytes": used, "Hits": hits, "Visits": visits,
            "LastContentModified": "2026-02-26T17:03:11.0000000Z", "LockState": lock}


CONTOSO = "https://sp2019.corp.example/sites/contoso"
FABRIKAM = "https://sp2019.corp.example/sites/fabrikam"
NORTHWIND = "https://spse.corp.example/sites/northwind"


def farm1_sites(**contoso):
    return [farm_site(CONTOSO, secondary="CORP\\bob", used=2560 * MIB, **contoso),
            farm_site(FABRIKAM, owner="CORP\\carol", quota=0, used=300 * MIB,
                      site_id="7a9b8c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"),
            {"Id": "0b1c2d3e-4f5a-4b6c-8d7e-9f0a1b2c3d4e", "Title": "half-created", "QuotaBytes": 0}]


def farm2_sites():
    return [farm_site(NORTHWIND, owner="CORP\\dave", quota=5 * GIB, used=GIB,
                      site_id="5d4c3b2a-1f0e-4d9c-8b7a-6f5e4d3c2b1a")]


@lru_cache(maxsize=None)
def declared_parameters(script: str) -> frozenset[str]:
    """The parameter names a script's ``param()`` block declares."""
    text = (SCRIPTS / f"{script}.ps1").read_text(encoding="utf-8")
    block = re.search(r"param\((.*?)\n\)", text, re.S | re.I)
    return frozenset(re.findall(r"\]\s*\$([A-Za-z]+)", block.group(1))) if block else frozenset()
