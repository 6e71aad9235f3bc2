"""IIS W3C extended log files as IIS 10 writes them, for the bandwidth tests and ``bench/bandwidth.py``.

IIS writes one file per site and period under ``<log folder>\\W3SVC<site id>\\u_exYYMMDD.log``
(UTF-8, CRLF line ends, times in UTC), starting with ``#Software``, ``#Version``, ``#Date`` and
``#Fields`` directives and repeating them when the service restarts or the logged fields change.
sc-bytes and cs-bytes are not in IIS's default field set: a host that bills traffic enables them,
so the layout here (``FIELDS``) is the default set plus those two, in the order IIS Manager puts
them. :func:`write_site_logs` writes many lines fast (the benchmark writes 10 million) and returns
the exact totals, so a test or the bench checks the counts to the byte.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

FIELDS = ("date time s-ip cs-method cs-uri-stem cs-uri-query s-port cs-username c-ip cs(User-Agent) cs(Referer) "
          "sc-status sc-substatus sc-win32-status sc-bytes cs-bytes time-taken")
AGENT = "Mozilla/5.0+(Windows+NT+10.0;+Win64;+x64)+AppleWebKit/537.36+(KHTML,+like+Gecko)+Chrome/120.0+Safari/537.36"
PAGES = ("/", "/index.php", "/wp-content/themes/site/style.css", "/images/logo.png", "/api/orders", "/contact")


def header(day: date | str, fields: str = FIELDS, at: str = "00:00:00") -> str:
    return (f"#Software: Microsoft Internet Information Services 10.0\r\n#Version: 1.0\r\n"
            f"#Date: {day} {at}\r\n#Fields: {fields}\r\n")


def line(day: date | str, time: str = "10:00:00", sent: int = 1000, received: int = 200, *, status: int = 200,
         page: str = "/", fields: str = FIELDS) -> str:
    """One request line in the layout ``fields`` (any order of the known names)."""
    values = {"date": str(day), "time": time, "s-ip": "10.0.0.5", "cs-method": "GET", "cs-uri-stem": page,
              "cs-uri-query": "-", "s-port": "443", "cs-username": "-", "c-ip": "203.0.113.7",
              "cs(User-Agent)": AGENT, "cs(Referer)": "-", "sc-status": str(status), "sc-substatus": "0",
              "sc-win32-status": "0", "sc-bytes": str(sent), "cs-bytes": str(received), "time-taken": "15"}
    return " ".join(values[name] for name in fields.split()) + "\r\n"


def site_folder(root: Path, iis_site_id: int) -> Path:
    folder = Path(root) / f"W3SVC{iis_site_id}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def log_name(day: date) -> str:
    return f"u_ex{day:%y%m%d}.log"


def write_site_logs(root: Path, iis_site_ids, days: list[date], lines_per_file: int, seed: int = 0) -> dict[int, int]:
    """For each site and day, a log of ``lines_per_file`` requests (sizes vary deterministically);
    returns sent + received bytes per IIS site id. Written in one go per file (fast enough for 10
    million lines: the values cycle through a precomputed table instead of calling ``random``)."""
    sizes = [(200 + (i * 7919 + seed) % 48_000, 150 + (i * 104_729 + seed) % 1_800) for i in range(4096)]
    totals: dict[int, int] = {}
    for site in iis_site_ids:
        folder = site_folder(root, site)
        total = 0
        for day in days:
            prefix = f"{day} "
            body = []
            for i in range(lines_per_file):
                sent, received = sizes[(i + site) & 4095]
                total += sent + received
                body.append(f"{prefix}{i % 24:02d}:{i % 60:02d}:{(i * 7) % 60:02d} 10.0.0.5 GET {PAGES[i % 6]} - 443 - "
                            f"198.51.100.{i % 250} {AGENT} - 200 0 0 {sent} {received} {i % 97}\r\n")
            (folder / log_name(day)).write_text(header(day) + "".join(body), encoding="utf-8", newline="")
        totals[site] = total
    return totals
