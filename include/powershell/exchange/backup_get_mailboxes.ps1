# The restorable definition of every mailbox of one organisation (its OU), for SyncMissingDataWork's
# backup: identity, addresses, type, database and quotas as Get-Mailbox reports them. One row per
# mailbox; the caller treats a listing of exactly ResultSize rows as possibly cut short.
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
        Guid                           = $mailbox.ExchangeGuid.ToString()
        Name                           = "$($mailbox.Name)"
        Alias                          = "$($mailbox.Alias)"
        DisplayName                    = "$($mailbox.DisplayName)"
        PrimarySmtpAddress             = $mailbox.PrimarySmtpAddress.ToString()
        EmailAddresses                 = @($mailbox.EmailAddresses | ForEach-Object { "$_" })
        UserPrincipalName              = "$($mailbox.UserPrincipalName)"
        RecipientTypeDetails           = "$($mailbox.RecipientTypeDetails)"
        Database                       = if ($mailbox.Database) { "$($mailbox.Database)" } else { $null }
        IssueWarningQuota              = "$($mailbox.IssueWarningQuota)"
        ProhibitSendQuota              = "$($mailbox.ProhibitSendQuota)"
        ProhibitSendReceiveQuota       = "$($mailbox.ProhibitSendReceiveQuota)"
        HiddenFromAddressListsEnabled  = $mailbox.HiddenFromAddressListsEnabled
    }
})
ConvertTo-Json -InputObject @($rows) -Depth 4 -Compress
