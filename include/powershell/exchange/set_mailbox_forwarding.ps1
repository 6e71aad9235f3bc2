# Sets (or, with neither address, clears) a mailbox's forwarding: to an external address
# (ForwardingSmtpAddress) or to a recipient of the organisation (ForwardingAddress), keeping a copy
# in the mailbox or not; reports the forwarding Exchange now holds.
param(
    [Parameter(Mandatory = $true)][string]$Identity,
    [string]$ForwardingSmtpAddress,
    [string]$ForwardingAddress,
    [bool]$DeliverToMailboxAndForward = $false
)
$ErrorActionPreference = 'Stop'
if (-not (Get-PSSnapin -Name Microsoft.Exchange.Management.PowerShell.SnapIn -ErrorAction SilentlyContinue)) {
    Add-PSSnapin -Name Microsoft.Exchange.Management.PowerShell.SnapIn
}

$smtp = if ($ForwardingSmtpAddress) { $ForwardingSmtpAddress } else { $null }
$recipient = if ($ForwardingAddress) { $ForwardingAddress } else { $null }
Set-Mailbox -Identity $Identity -ForwardingSmtpAddress $smtp -ForwardingAddress $recipient `
    -DeliverToMailboxAndForward $DeliverToMailboxAndForward
$mailbox = Get-Mailbox -Identity $Identity
$rows = [pscustomobject]@{
    ExchangeGuid               = $mailbox.ExchangeGuid.ToString()
    PrimarySmtpAddress         = $mailbox.PrimarySmtpAddress.ToString()
    ForwardingAddress          = if ($mailbox.ForwardingAddress) { "$($mailbox.ForwardingAddress)" } else { $null }
    ForwardingSmtpAddress      = if ($mailbox.ForwardingSmtpAddress) { "$($mailbox.ForwardingSmtpAddress)" } else { $null }
    DeliverToMailboxAndForward = $mailbox.DeliverToMailboxAndForward
}
ConvertTo-Json -InputObject @($rows) -Depth 4 -Compress
