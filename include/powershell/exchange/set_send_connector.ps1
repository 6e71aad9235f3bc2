# Sets an existing send connector's smart hosts, address spaces, port and state to the panel's
# values (Set-SendConnector) and reports the connector as Exchange now holds it.
param(
    [Parameter(Mandatory = $true)][string]$Identity,
    [Parameter(Mandatory = $true)][string[]]$SmartHosts,
    [Parameter(Mandatory = $true)][string[]]$AddressSpaces,
    [int]$Port = 25,
    [bool]$Enabled = $true
)
$ErrorActionPreference = 'Stop'
if (-not (Get-PSSnapin -Name Microsoft.Exchange.Management.PowerShell.SnapIn -ErrorAction SilentlyContinue)) {
    Add-PSSnapin -Name Microsoft.Exchange.Management.PowerShell.SnapIn
}

Set-SendConnector -Identity $Identity -SmartHosts $SmartHosts -AddressSpaces $AddressSpaces -DNSRoutingEnabled $false `
    -Port $Port -Enabled $Enabled
$connector = Get-SendConnector -Identity $Identity
$rows = [pscustomobject]@{
    Name                   = $connector.Name
    Identity               = "$($connector.Identity)"
    Guid                   = $connector.Guid.ToString()
    Enabled                = $connector.Enabled
    SmartHosts             = @($connector.SmartHosts | ForEach-Object { $_.ToString() })
    AddressSpaces          = @($connector.AddressSpaces | ForEach-Object { $_.ToString() })
    Port                   = $connector.Port
    DNSRoutingEnabled      = $connector.DNSRoutingEnabled
    SmartHostAuthMechanism = "$($connector.SmartHostAuthMechanism)"
    SourceTransportServers = @($connector.SourceTransportServers | ForEach-Object { $_.Name })
    WhenChanged            = $connector.WhenChangedUTC.ToString('o')
}
ConvertTo-Json -InputObject @($rows) -Depth 4 -Compress
