# Deletes a site collection (Remove-SPSite, to the farm's site-collection recycle bin unless
# GradualDelete is off). A site already gone answers Found = false: a retried job succeeds.
param(
    [Parameter(Mandatory = $true)][string]$Url
)
$ErrorActionPreference = 'Stop'
if ($null -eq (Get-PSSnapin -Name Microsoft.SharePoint.PowerShell -ErrorAction SilentlyContinue)) {
    Add-PSSnapin Microsoft.SharePoint.PowerShell
}

$site = Get-SPSite -Identity $Url -ErrorAction SilentlyContinue
$found = $false
$id = $null
if ($site) {
    $same = $site.Url.TrimEnd('/') -eq $Url.TrimEnd('/')
    $id = $site.ID.ToString()
    $site.Dispose()
    if ($same) {
        Remove-SPSite -Identity $Url -GradualDelete -Confirm:$false
        $found = $true
    } else {
        $id = $null
    }
}
ConvertTo-Json -InputObject @([pscustomobject]@{ Url = $Url; Found = $found; Id = $id }) -Compress
