# The ASP.NET State Service configuration of this server: the registry values it reads at start
# (HKLM:\SYSTEM\CurrentControlSet\Services\aspnet_state\Parameters: Port, AllowRemoteConnection)
# and the service's start type and status. One object; a value not set is $null (the service's
# default applies: port 42424, no remote connections).
param()
$ErrorActionPreference = 'Stop'

$key = 'HKLM:\SYSTEM\CurrentControlSet\Services\aspnet_state\Parameters'
$values = if (Test-Path -LiteralPath $key) { Get-ItemProperty -LiteralPath $key } else { $null }
$service = Get-Service -Name 'aspnet_state' -ErrorAction SilentlyContinue
if ($null -eq $service) { throw 'the ASP.NET State Service (aspnet_state) is not installed on this server' }
$row = [pscustomobject]@{
    ComputerName          = $env:COMPUTERNAME
    Port                  = if ($values -and $null -ne $values.Port) { [int]$values.Port } else { $null }
    AllowRemoteConnection = if ($values -and $null -ne $values.AllowRemoteConnection) { [int]$values.AllowRemoteConnection } else { $null }
    StartType             = $service.StartType.ToString()
    Status                = $service.Status.ToString()
}
ConvertTo-Json -InputObject @($row) -Depth 2 -Compress
