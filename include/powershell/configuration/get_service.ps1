# Reads one Windows service's startup type and status. A service that is not installed is
# reported (Exists = false), not an error: that is drift, not a failure.
param(
    [Parameter(Mandatory = $true)][string]$Name
)
$ErrorActionPreference = 'Stop'

$service = Get-Service -Name $Name -ErrorAction SilentlyContinue
$row = [pscustomobject]@{ Name = $Name; Exists = $false; StartupType = $null; Status = $null }
if ($service) {
    $row.Exists = $true
    $row.StartupType = $service.StartType.ToString()
    $row.Status = $service.Status.ToString()
}
ConvertTo-Json -InputObject @($row) -Depth 2 -Compress
