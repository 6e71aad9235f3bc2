# Every send connector of the Exchange organisation, with its smart hosts and address spaces as
# Exchange writes them ("[10.0.0.25]", "SMTP:*;1").
param()
$ErrorActionPreference = 'Stop'
if (-not (Get-PSSnapin -Name Microsoft.Exchange.Management.PowerShell.SnapIn -ErrorAction SilentlyContinue)) {
    Add-PSSnapin -Name Microsoft.Exchange.Management.PowerShell.SnapIn
}

$rows = @(foreach ($connector in @(Get-SendConnector)) {
    [pscustomobject]@{
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
})
ConvertTo-Json -InputObject @($rows) -Depth 4 -Compress
