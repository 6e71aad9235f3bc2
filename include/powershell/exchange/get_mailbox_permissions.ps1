# The permissions on every mailbox of one organisation (its OU): explicit (not inherited) entries of
# Get-MailboxPermission (full access …), the AD "Send As" extended right (Get-ADPermission:
# Get-RecipientPermission exists only in Exchange Online) and GrantSendOnBehalfTo. One row per
# mailbox, even one without permissions, so the panel can drop rows no longer granted. Default
# entries (NT AUTHORITY\SELF …) are left in: the panel decides what it ignores.
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
    $fullAccess = @(foreach ($entry in @(Get-MailboxPermission -Identity $mailbox.Identity | Where-Object { -not $_.IsInherited })) {
        [pscustomobject]@{
            User         = "$($entry.User)"
            AccessRights = @($entry.AccessRights | ForEach-Object { "$_" -split ',\s*' })
            IsInherited  = $entry.IsInherited
            Deny         = $entry.Deny
        }
    })
    $sendAs = @(foreach ($entry in @(Get-ADPermission -Identity $mailbox.DistinguishedName |
                                     Where-Object { -not $_.IsInherited -and ($_.ExtendedRights -join ',') -like '*Send-As*' })) {
        [pscustomobject]@{
            User           = "$($entry.User)"
            ExtendedRights = @($entry.ExtendedRights | ForEach-Object { "$_" })
            IsInherited    = $entry.IsInherited
            Deny           = $entry.Deny
        }
    })
    [pscustomobject]@{
        Identity            = "$($mailbox.Identity)"
        ExchangeGuid        = $mailbox.ExchangeGuid.ToString()
        PrimarySmtpAddress  = $mailbox.PrimarySmtpAddress.ToString()
        MailboxPermissions  = $fullAccess
        SendAs              = $sendAs
        GrantSendOnBehalfTo = @($mailbox.GrantSendOnBehalfTo | ForEach-Object { "$_" })
    }
})
# -Depth 5: rows → row → list of entries → entry → list of rights are five levels
ConvertTo-Json -InputObject @($rows) -Depth 5 -Compress
