# Suspends (Enabled = $false) or resumes a mailbox: every client protocol off or on
# (Set-CASMailbox), and a user mailbox's AD account disabled or enabled; mail is still delivered,
# nothing is removed. Sets a state, so a repeated job changes nothing more.
param(
    [Parameter(Mandatory = $true)][string]$Identity,
    [Parameter(Mandatory = $true)][bool]$Enabled
)
$ErrorActionPreference = 'Stop'
if (-not (Get-PSSnapin -Name Microsoft.Exchange.Management.PowerShell.SnapIn -ErrorAction SilentlyContinue)) {
    Add-PSSnapin -Name Microsoft.Exchange.Management.PowerShell.SnapIn
}

$mailbox = Get-Mailbox -Identity $Identity
Set-CASMailbox -Identity $mailbox.Identity -OWAEnabled $Enabled -ActiveSyncEnabled $Enabled -EwsEnabled $Enabled `
    -MAPIEnabled $Enabled -PopEnabled $Enabled -ImapEnabled $Enabled
if ("$($mailbox.RecipientTypeDetails)" -eq 'UserMailbox') {
    Set-Mailbox -Identity $mailbox.Identity -AccountDisabled (-not $Enabled)
}
$mailbox = Get-Mailbox -Identity $mailbox.Identity
$cas = Get-CASMailbox -Identity $mailbox.Identity
$rows = [pscustomobject]@{
    ExchangeGuid         = $mailbox.ExchangeGuid.ToString()
    PrimarySmtpAddress   = $mailbox.PrimarySmtpAddress.ToString()
    RecipientTypeDetails = "$($mailbox.RecipientTypeDetails)"
    AccountDisabled      = $mailbox.AccountDisabled
    OWAEnabled           = $cas.OWAEnabled
    ActiveSyncEnabled    = $cas.ActiveSyncEnabled
    EwsEnabled           = $cas.EwsEnabled
    MAPIEnabled          = $cas.MAPIEnabled
    PopEnabled           = $cas.PopEnabled
    ImapEnabled          = $cas.ImapEnabled
}
ConvertTo-Json -InputObject @($rows) -Depth 4 -Compress
