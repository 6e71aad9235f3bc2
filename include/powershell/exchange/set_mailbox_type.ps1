# Converts a mailbox between user (Regular), shared, room and equipment (Set-Mailbox -Type) and
# reports the type Exchange now holds.
param(
    [Parameter(Mandatory = $true)][string]$Identity,
    [Parameter(Mandatory = $true)][ValidateSet('Regular', 'Shared', 'Room', 'Equipment')][string]$Type
)
$ErrorActionPreference = 'Stop'
if (-not (Get-PSSnapin -Name Microsoft.Exchange.Management.PowerShell.SnapIn -ErrorAction SilentlyContinue)) {
    Add-PSSnapin -Name Microsoft.Exchange.Management.PowerShell.SnapIn
}

Set-Mailbox -Identity $Identity -Type $Type
$mailbox = Get-Mailbox -Identity $Identity
$rows = [pscustomobject]@{
    ExchangeGuid         = $mailbox.ExchangeGuid.ToString()
    PrimarySmtpAddress   = $mailbox.PrimarySmtpAddress.ToString()
    RecipientTypeDetails = "$($mailbox.RecipientTypeDetails)"
}
ConvertTo-Json -InputObject @($rows) -Depth 4 -Compress
