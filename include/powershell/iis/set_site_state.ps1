# Sets an IIS site (and its application pool) Started or Stopped — a state, never a toggle, so a
# retried suspend leaves a stopped site stopped. A stopped site also stops auto-starting, so an
# IIS reset does not bring a suspended customer back.
param(
    [Parameter(Mandatory = $true)][string]$Name,
    [Parameter(Mandatory = $true)][ValidateSet('Started', 'Stopped')][string]$State
)
$ErrorActionPreference = 'Stop'
Import-Module WebAdministration

$site = Get-Website | Where-Object { $_.Name -eq $Name }
if (-not $site) { throw ("No web site '{0}' on {1}" -f $Name, $env:COMPUTERNAME) }
$before = $site.State
$pool = $site.ApplicationPool
$sitePath = 'IIS:\Sites\' + $site.Name
if ($State -eq 'Stopped') {
    if ($before -ne 'Stopped') { Stop-Website -Name $site.Name }
    Set-ItemProperty -LiteralPath $sitePath -Name serverAutoStart -Value $false
    # the pool is the site's own (new_site.ps1); one shared with a live site keeps running
    $others = @(Get-Website | Where-Object { $_.ApplicationPool -eq $pool -and $_.Name -ne $site.Name -and $_.State -eq 'Started' })
    if ($pool -and $others.Count -eq 0 -and (Get-WebAppPoolState -Name $pool).Value -ne 'Stopped') { Stop-WebAppPool -Name $pool }
} else {
    if ($pool -and (Get-WebAppPoolState -Name $pool).Value -ne 'Started') { Start-WebAppPool -Name $pool }
    Set-ItemProperty -LiteralPath $sitePath -Name serverAutoStart -Value $true
    if ($before -ne 'Started') { Start-Website -Name $site.Name }
}
$site = Get-Website | Where-Object { $_.Name -eq $Name }
$row = $site | Select-Object Name, Id, State, ApplicationPool,
    @{ Name = 'PreviousState'; Expression = { $before } },
    @{ Name = 'Changed'; Expression = { $before -ne $State } }
ConvertTo-Json -InputObject @($row) -Depth 3 -Compress
