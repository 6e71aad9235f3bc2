# Creates a site collection (New-SPSite) unless one exists at exactly that URL, which is returned as
# it is (Created = false): a retried job never makes a second one. A URL inside another site
# collection is refused. MaxSizeBytes/WarningSizeBytes (bytes, as SPQuota) set its quota (Set-SPSite).
param(
    [Parameter(Mandatory = $true)][string]$Url,
    [Parameter(Mandatory = $true)][string]$OwnerAlias,
    [string]$SecondaryOwnerAlias,
    [string]$Template,
    [string]$Name,
    [int64]$MaxSizeBytes,
    [int64]$WarningSizeBytes
)
$ErrorActionPreference = 'Stop'
if ($null -eq (Get-PSSnapin -Name Microsoft.SharePoint.PowerShell -ErrorAction SilentlyContinue)) {
    Add-PSSnapin Microsoft.SharePoint.PowerShell
}

$site = Get-SPSite -Identity $Url -ErrorAction SilentlyContinue
if ($site -and $site.Url.TrimEnd('/') -ne $Url.TrimEnd('/')) {
    throw ("{0} lies inside the site collection {1}" -f $Url, $site.Url)
}
$created = $false
if (-not $site) {
    $settings = @{ Url = $Url; OwnerAlias = $OwnerAlias }
    if ($SecondaryOwnerAlias) { $settings.SecondaryOwnerAlias = $SecondaryOwnerAlias }
    if ($Template) { $settings.Template = $Template }
    if ($Name) { $settings.Name = $Name }
    $site = New-SPSite @settings
    $created = $true
    if ($MaxSizeBytes -gt 0) {
        Set-SPSite -Identity $site -MaxSize $MaxSizeBytes -WarningSize $WarningSizeBytes
    }
    $site.Dispose()
    $site = Get-SPSite -Identity $Url
}
try {
    $web = $site.RootWeb
    $row = [pscustomobject]@{
        Url              = $site.Url
        Id               = $site.ID.ToString()
        Title            = $web.Title
        Owner            = if ($site.Owner) { $site.Owner.UserLogin } else { $null }
        SecondaryOwner   = if ($site.SecondaryContact) { $site.SecondaryContact.UserLogin } else { $null }
        Template         = '{0}#{1}' -f $web.WebTemplate, $web.Configuration
        QuotaBytes       = [int64]$site.Quota.StorageMaximumLevel
        StorageUsedBytes = [int64]$site.Usage.Storage
        Created          = $created
    }
} finally {
    $site.Dispose()
}
ConvertTo-Json -InputObject @($row) -Depth 3 -Compress
