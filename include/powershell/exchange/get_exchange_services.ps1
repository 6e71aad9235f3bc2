# The Windows services an Exchange server depends on, for server_services: every MSExchange*
# service and the others Test-ServiceHealth names as required by the server's roles (IISAdmin,
# W3Svc, WinRM …), with their state; and Test-ServiceHealth's verdict per role. Status and
# StartType are sent as their names: ConvertTo-Json would write the enums as numbers.
param(
    [Parameter(Mandatory = $true)][string]$Server
)
$ErrorActionPreference = 'Stop'
if (-not (Get-PSSnapin -Name Microsoft.Exchange.Management.PowerShell.SnapIn -ErrorAction SilentlyContinue)) {
    Add-PSSnapin -Name Microsoft.Exchange.Management.PowerShell.SnapIn
}

$health = @(foreach ($role in Test-ServiceHealth -Server $Server) {
    [pscustomobject]@{
        Role                    = [string]$role.Role
        RequiredServicesRunning = [bool]$role.RequiredServicesRunning
        ServicesRunning         = @($role.ServicesRunning | ForEach-Object { [string]$_ })
        ServicesNotRunning      = @($role.ServicesNotRunning | ForEach-Object { [string]$_ })
    }
})
$names = @('MSExchange*') + @($health | ForEach-Object { $_.ServicesRunning + $_.ServicesNotRunning })
$services = @(Get-Service -Name $names | Sort-Object -Property Name -Unique | ForEach-Object {
    [pscustomobject]@{
        Name        = $_.Name
        DisplayName = $_.DisplayName
        Status      = [string]$_.Status
        StartType   = [string]$_.StartType
    }
})
ConvertTo-Json -InputObject @([pscustomobject]@{ Services = $services; Health = $health }) -Depth 4 -Compress
