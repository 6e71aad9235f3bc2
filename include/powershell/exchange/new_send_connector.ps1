# Creates a smart-host send connector (New-SendConnector, no DNS routing); one that exists by that
# name already is set to these values instead, so a repeated run creates it once.
param(
    [Parameter(Mandatory = $true)][string]$Name,
    [Parameter(Mandatory = $true)][string[]]$SmartHosts,
    [Parameter(Mandatory = $true)][string[]]$AddressSpaces,
    [Parameter(Mandatory = $true)][string[]]$SourceTransportServers,
    [int]$Port = 25,
    [bool]$Enabled = $true
)
$ErrorActionPreference = 'Stop'
if (-not (Get-PSSnapin -Name Microsoft.Exchange.Management.PowerShell.SnapIn -ErrorAction SilentlyContinue)) {
    Add-PSSnapin -Name Microsoft.Exchange.Management.PowerShell.SnapIn
}

$connector = Get-SendConnector -Identity $Name -ErrorAction SilentlyContinue
$created = $false
if ($connector) {
    Set-SendConnector -Identity $connector.Identity -SmartHosts $SmartHosts -AddressSpaces $AddressSpaces `
        -DNSRoutingEnabled $false -SourceTransportServers $SourceTransportServers -Port $Port -Enabled $Enabled
} else {
    New-SendConnector -Name $Name -Usage Custom -SmartHosts $SmartHosts -AddressSpaces $AddressSpaces `
        -DNSRoutingEnabled $false -SmartHostAuthMechanism None -SourceTransportServers $SourceTransportServers `
        -Port $Port -Enabled $Enabled | Out-Null
    $created = $true
}
$connector = Get-SendConnector -Identity $Name
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
    Created                = $created
}
ConvertTo-Json -InputObject @($rows) -Depth 4 -Compress
