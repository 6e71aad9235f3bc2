# The forwarding of every mailbox of one organisation (its OU): to an external address
# (ForwardingSmtpAddress, "smtp:…"), to a recipient of the organisation (ForwardingAddress), and
# whether a copy stays in the mailbox. One row per mailbox, forwarding or not.
param(
    [Parameter(Mandatory = $true)][string]$OrganizationalUnit,
    [int]$ResultSize = 5000
)
$ErrorActionPreference = 'Stop'
if (-not (Get-PSSnapin -Name Microsoft.Exchange.Management.PowerShell.SnapIn -ErrorAction SilentlyContinue)) {
    Add-PSSnapin -Name Microsoft.Exchange.Management.PowerShell.SnapIn
}

$mailboxes = @(Get-Mailbox -OrganizationalUnit $OrganizationalUnit -ResultSize $ResultSize -WarningAction SilentlyContinue)
$rows = @(foreach ($mailbox in $mailboxes) {
    [pscustomobject]@{
        Identity                   = "$($mailbox.Identity)"
        ExchangeGuid               = $mailbox.ExchangeGuid.ToString()
        PrimarySmtpAddress         = $mailbox.PrimarySmtpAddress.ToString()
        ForwardingAddress          = if ($mailbox.ForwardingAddress) { "$($mailbox.ForwardingAddress)" } else { $null }
        ForwardingSmtpAddress      = if ($mailbox.ForwardingSmtpAddress) { "$($mailbox.ForwardingSmtpAddress)" } else { $null }
        DeliverToMailboxAndForward = $mailbox.DeliverToMailboxAndForward
    }
})
ConvertTo-Json -InputObject @($rows) -Depth 4 -Compress
