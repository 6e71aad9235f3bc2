"""ProvisioningWork step 14: each organisation's OU offers its customer's verified domains as UPN suffixes.

A hosted organisation's users sign in as ``user@<the customer's domain>``; AD (and Exchange, which
reads the OU's ``uPNSuffixes`` to offer the choice) accepts only the suffixes the OU lists. The
panel knows which domains a customer owns: its ``domains`` rows whose ownership was verified
(0004). Each organisation linked to a customer gets every such domain added to its OU's
``uPNSuffixes``; the OU is found by its ``objectGUID`` among the OUs directly under ``base_dn``, so
a renamed OU is still the customer's and nothing outside the managed subtree is written.

Only missing suffixes are added. A suffix the OU has that is not (or no longer) a verified domain
of the customer is reported (``extra_suffixes``), never removed: users may still sign in with it,
and removing a suffix does not change their UPNs. The panel's ``ad_organisations.upn_suffixes`` and
``ad_upn_suffixes`` follow at once, as the user sync would write them. Bounded by
``suffix_organisations_per_run`` (500) organisations changed per directory.
"""

from __future__ import annotations

from panelflow.hooks.active_directory import OU_FILTER, ActiveDirectoryRejected
from panelflow.step import StepReport

from ._backend import Directory, each_directory

_WANTED = """
SELECT o.id, o.object_guid, o.name, coalesce(array_agg(DISTINCT lower(dm.name)) FILTER (WHERE dm.id IS NOT NULL), '{}')
FROM ad_organisations o
LEFT JOIN domains dm ON dm.customer_id = o.customer_id AND dm.status = 'verified'
WHERE o.directory_id = %s AND NOT o.deleted AND o.customer_id IS NOT NULL
GROUP BY o.id ORDER BY o.id
"""

_PANEL_SUFFIXES = """
WITH o AS (UPDATE ad_organisations SET upn_suffixes = %(suffixes)s WHERE id = %(org)s RETURNING directory_id, id)
INSERT INTO ad_upn_suffixes (directory_id, suffix, source, organisation_id, synced_at)
SELECT o.directory_id, s, 'organisation', o.id, %(at)s FROM o, unnest(%(suffixes)s::text[]) AS s
ON CONFLICT (directory_id, suffix) DO NOTHING
"""


def _organisation_ous(hook, d: Directory, report: StepReport) -> dict:
    """The OUs directly under ``base_dn`` (the organisations) by objectGUID: one paged search
    rather than one read per organisation, as this runs every ProvisioningWork cycle."""
    ous = {}
    for entry in hook.search(d.base_dn, OU_FILTER, ["objectGUID", "uPNSuffixes"], scope="LEVEL"):
        try:
            ous[entry.guid()] = entry
        except ValueError as exc:
            report.skip("unreadable organisation OU", f"directory {d.name}: {entry.dn}: {exc}")
    return ous


def update_ad_org_suffixes(panel_db, interval, params=None, log=None) -> dict:
    """Step 14 of ProvisioningWork: add each customer's verified domains to its OU's UPN suffixes
    (see the module's doc)."""
    params = params or {}
    per_run = int(params.get("suffix_organisations_per_run", 500))
    report = StepReport().zero("organisations", "organisations_changed", "suffixes_added", "extra_suffixes",
                               "not_in_directory")

    def work(conn, d: Directory, hook) -> None:
        changed = 0
        wanted_rows = conn.execute(_WANTED, (d.id,)).fetchall()
        ous = _organisation_ous(hook, d, report) if wanted_rows else {}
        for org_id, guid, name, wanted in wanted_rows:
            report.add("organisations")
            entry = ous.get(guid)
            if entry is None:
                report.add("not_in_directory")
                report.skip("organisation OU not in the managed subtree", f"directory {d.name}: {name} ({guid})")
                continue
            current = entry.texts("uPNSuffixes")
            have = {s.lower() for s in current}
            missing = sorted(set(wanted) - have)
            extra = sorted(have - set(wanted))
            if extra:
                report.add("extra_suffixes", len(extra))
                report.skip("UPN suffix not a verified domain of the customer (kept)",
                            f"{entry.dn}: {', '.join(extra)}")
            if not missing:
                continue
            if changed >= per_run:
                report.add("organisations_deferred")
                continue
            try:
                hook.replace_attributes(entry.dn, {"uPNSuffixes": [*current, *missing]})
            except ActiveDirectoryRejected as exc:
                report.skip(f"suffixes not written: {exc}", entry.dn)
                continue
            changed += 1
            conn.execute(_PANEL_SUFFIXES, {"suffixes": sorted(have | set(missing)), "org": org_id,
                                           "at": interval.end})
            report.add("organisations_changed")
            report.add("suffixes_added", len(missing))
            if log is not None:
                log.info("added UPN suffixes %s to %s", ", ".join(missing), entry.dn)

    each_directory(panel_db, report, log, work)
    return report.as_dict()
