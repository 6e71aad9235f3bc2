# The signature (HTML disclaimer) transport rules of this Exchange organisation and the senders
# they apply to: the sender domains (SenderDomainIs) and sender addresses (From) the panel maps
# to its hosted organisations' accepted domains.
param()
$ErrorActionPreference = 'Stop'
if (-not (Get-PSSnapin -Name Microsoft.Exchange.Management.PowerShell.SnapIn -ErrorAction SilentlyContinue)) {
    Add-PSSnapin -Name Microsoft.Exchange.Management.PowerShell.SnapIn
}

$rows = @(Get-TransportRule -ResultSize Unlimited | Where-Object { $_.ApplyHtmlDisclaimerText } |
    Select-Object @{ n = 'Guid'; e = { [string]$_.Guid } }, Name,
                  @{ n = 'State'; e = { [string]$_.State } },
                  @{ n = 'ApplyHtmlDisclaimerLocation'; e = { [string]$_.ApplyHtmlDisclaimerLocation } },
                  @{ n = 'SenderDomainIs'; e = { @($_.SenderDomainIs | ForEach-Object { [string]$_ }) } },
                  @{ n = 'From'; e = { @($_.From | ForEach-Object { [string]$_ }) } })
ConvertTo-Json -InputObject @($rows) -Depth 4 -Compress
