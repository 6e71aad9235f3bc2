# Removes an IIS site (Stop-Website, Remove-Website) and its application pool when no other site
# uses it. The content folder is kept: customer files are removed by the panel's retention, not
# by a group action. A site already gone is not an error (Found = false), so a retry succeeds.
param(
    [Parameter(Mandatory = $true)][string]$Name
)
$ErrorActionPreference = 'Stop'
Import-Module WebAdministration

$site = Get-Website | Where-Object { $_.Name -eq $Name }
$found = [bool]$site
$id = $null
$poolRemoved = $false
if ($site) {
    $id = $site.Id
    $pool = $site.ApplicationPool
    if ($site.State -ne 'Stopped') { Stop-Website -Name $site.Name }
    Remove-Website -Name $site.Name
    if ($pool -and -not (Get-Website | Where-Object { $_.ApplicationPool -eq $pool })) {
        if (Get-ChildItem IIS:\AppPools | Where-Object { $_.Name -eq $pool }) {
            Remove-WebAppPool -Name $pool
            $poolRemoved = $true
        }
    }
}
$row = [pscustomobject]@{ Name = $Name; Id = $id; Found = $found; AppPoolRemoved = $poolRemoved } |
    Select-Object Name, Id, Found, AppPoolRemoved
ConvertTo-Json -InputObject @($row) -Depth 2 -Compress
