# Lists the farm's site collections (Get-SPSite -Limit All) with their owners, quota, storage used,
# usage counters and lock state: SyncFromBackendWork 2 and UsageReportWork 5 read the same list.
# Sizes are bytes (SPQuota.StorageMaximumLevel, SPSite.Usage.Storage); 0 quota = no quota.
# LockState is Set-SPSite's word for SPSite's lock flags: NoAccess = ReadLocked,
# ReadOnly = ReadOnly, NoAdditions = WriteLocked.
param(
    [string]$WebApplication
)
$ErrorActionPreference = 'Stop'
if ($null -eq (Get-PSSnapin -Name Microsoft.SharePoint.PowerShell -ErrorAction SilentlyContinue)) {
    Add-PSSnapin Microsoft.SharePoint.PowerShell
}

$query = @{ Limit = 'All' }
if ($WebApplication) { $query.WebApplication = $WebApplication }
$rows = foreach ($site in @(Get-SPSite @query)) {
    try {
        $lock = if ($site.ReadLocked) { 'NoAccess' } elseif ($site.ReadOnly) { 'ReadOnly' }
                elseif ($site.WriteLocked) { 'NoAdditions' } else { 'Unlock' }
        $web = $site.RootWeb
        [pscustomobject]@{
            Url                 = $site.Url
            Id                  = $site.ID.ToString()
            Title               = $web.Title
            Owner               = if ($site.Owner) { $site.Owner.UserLogin } else { $null }
            SecondaryOwner      = if ($site.SecondaryContact) { $site.SecondaryContact.UserLogin } else { $null }
            Template            = '{0}#{1}' -f $web.WebTemplate, $web.Configuration
            QuotaBytes          = [int64]$site.Quota.StorageMaximumLevel
            StorageUsedBytes    = [int64]$site.Usage.Storage
            Hits                = [int64]$site.Usage.Hits
            Visits              = [int64]$site.Usage.Visits
            LastContentModified = $site.LastContentModifiedDate.ToUniversalTime().ToString('o')
            LockState           = $lock
        }
    } finally {
        $site.Dispose()
    }
}
ConvertTo-Json -InputObject @($rows) -Depth 3 -Compress
