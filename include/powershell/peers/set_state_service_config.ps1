# Makes this server's ASP.NET State Service configuration the primary's: the Parameters registry
# values (DWORDs) and the service's start type. The service reads its Parameters only at start,
# so a running service is restarted when a value changed (sessions it holds are lost: the
# load balancer's peers keep theirs). Prints what it found and did.
param(
    [Parameter(Mandatory = $true)][ValidateRange(1, 65535)][int]$Port,
    [Parameter(Mandatory = $true)][ValidateSet(0, 1)][int]$AllowRemoteConnection,
    [Parameter(Mandatory = $true)][ValidateSet('Automatic', 'Manual', 'Disabled')][string]$StartType
)
$ErrorActionPreference = 'Stop'

$key = 'HKLM:\SYSTEM\CurrentControlSet\Services\aspnet_state\Parameters'
if (-not (Test-Path -LiteralPath $key)) { New-Item -Path $key | Out-Null }
$current = Get-ItemProperty -LiteralPath $key
$changed = $false
foreach ($pair in @(@('Port', $Port), @('AllowRemoteConnection', $AllowRemoteConnection))) {
    if ($current.($pair[0]) -ne $pair[1]) {
        New-ItemProperty -LiteralPath $key -Name $pair[0] -PropertyType DWord -Value $pair[1] -Force | Out-Null
        $changed = $true
    }
}
$service = Get-Service -Name 'aspnet_state'
if ($service.StartType.ToString() -ne $StartType) { Set-Service -Name 'aspnet_state' -StartupType $StartType }
$restarted = $false
if ($changed -and $service.Status -eq 'Running') {
    Restart-Service -Name 'aspnet_state' -Force
    $restarted = $true
}
$row = [pscustomobject]@{ ComputerName = $env:COMPUTERNAME; Changed = $changed; Restarted = $restarted }
ConvertTo-Json -InputObject @($row) -Depth 2 -Compress
