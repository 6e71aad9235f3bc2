# Sets a site collection's quota (MaxSizeBytes/WarningSizeBytes, bytes as SPQuota) and/or lock
# state (Set-SPSite -LockState): a state, so doing it twice does it once. Returns the site as it
# is afterwards.
param(
    [Parameter(Mandatory = $true)][string]$Url,
    [int64]$MaxSizeBytes = -1,
    [int64]$WarningSizeBytes = 0,
    [ValidateSet('Unlock', 'NoAdditions', 'ReadOnly', 'NoAccess')][string]$LockState
)
$ErrorActionPreference = 'Stop'
if ($null -eq (Get-PSSnapin -Name Microsoft.SharePoint.PowerShell -ErrorAction SilentlyContinue)) {
    Add-PSSnapin Microsoft.SharePoint.PowerShell
}

$site = Get-SPSite -Identity $Url
if ($site.Url.TrimEnd('/') -ne $Url.TrimEnd('/')) {
    $found = $site.Url
    $site.Dispose()
    throw ("{0} is not a site collection (it lies inside {1})" -f $Url, $found)
}
$site.Dispose()
$settings = @{ Identity = $Url }
if ($MaxSizeBytes -ge 0) { $settings.MaxSize = $MaxSizeBytes; $settings.WarningSize = $WarningSizeBytes }
if ($LockState) { $settings.LockState = $LockState }
Set-SPSite @settings

$site = Get-SPSite -Identity $Url
try {
    $lock = if ($site.ReadLocked) { 'NoAccess' } elseif ($site.ReadOnly) { 'ReadOnly' }
            elseif ($site.WriteLocked) { 'NoAdditions' } else { 'Unlock' }
    $row = [pscustomobject]@{
        Url              = $site.Url
        Id               = $site.ID.ToString()
        QuotaBytes       = [int64]$site.Quota.StorageMaximumLevel
        StorageUsedBytes = [int64]$site.Usage.Storage
        LockState        = $lock
    }
} finally {
    $site.Dispose()
}
ConvertTo-Json -InputObject @($row) -Depth 3 -Compress
