"""SharePoint: on-premises farms over PowerShell remoting and SharePoint Online through Microsoft Graph.

:mod:`._backend` holds the farms and tenants, the records the farm scripts print, the loops over
both and the merge of a site listing into ``sharepoint_site_collections`` (0033); :mod:`.jobs` is
GroupActionWorkSP, :mod:`.sync` SyncFromBackendWork 2, :mod:`.editions` ProvisioningWork 37 and
:mod:`.usage` UsageReportWork 5. Clock: ``interval.end`` only.
"""
