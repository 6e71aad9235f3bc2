# Sets one Windows service's startup type and/or brings it to a status, then returns it as read back,
# in get_service's shape. Both are states: applying twice is the same. A service that is not
# installed is an error (the template cannot be applied to this server).
param(
    [Parameter(Mandatory = $true)][string]$Name,
    [ValidateSet('Automatic', 'Manual', 'Disabled')][string]$StartupType,
    [ValidateSet('Running', 'Stopped')][string]$Status
)
$ErrorActionPreference = 'Stop'

$service = Get-Service -Name $Name
if ($StartupType -and $service.StartType.ToString() -ne $StartupType) { Set-Service -Name $Name -StartupType $StartupType }
if ($Status -eq 'Running' -and $service.Status -ne 'Running') { Start-Service -Name $Name }
if ($Status -eq 'Stopped' -and $service.Status -ne 'Stopped') { Stop-Service -Name $Name -Force }
$service = Get-Service -Name $Name
$row = [pscustomobject]@{
    Name        = $Name
    Exists      = $true
    StartupType = $service.StartType.ToString()
    Status      = $service.Status.ToString()
}
ConvertTo-Json -InputObject @($row) -Depth 2 -Compress
