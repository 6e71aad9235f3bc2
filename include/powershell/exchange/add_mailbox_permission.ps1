# Grants a trustee full access (Add-MailboxPermission), send as (the AD "Send As" extended right,
# Add-ADPermission: Get/Add-RecipientPermission exist only in Exchange Online) or send on behalf
# (GrantSendOnBehalfTo) on a mailbox, unless it is granted already; reports the trustee as
# Exchange names it, so the panel's row matches what the permission sync reads back.
param(
    [Parameter(Mandatory = $true)][string]$Identity,
    [Parameter(Mandatory = $true)][string]$Trustee,
    [Parameter(Mandatory = $true)][ValidateSet('FullAccess', 'SendAs', 'SendOnBehalf')][string]$Permission,
    [bool]$AutoMapping = $true
)
$ErrorActionPreference = 'Stop'
if (-not (Get-PSSnapin -Name Microsoft.Exchange.Management.PowerShell.SnapIn -ErrorAction SilentlyContinue)) {
    Add-PSSnapin -Name Microsoft.Exchange.Management.PowerShell.SnapIn
}

$mailbox = Get-Mailbox -Identity $Identity
$changed = $false
switch ($Permission) {
    'FullAccess' {
        $find = { @(Get-MailboxPermission -Identity $mailbox.Identity -User $Trustee -ErrorAction SilentlyContinue |
                    Where-Object { -not $_.IsInherited -and -not $_.Deny -and ($_.AccessRights -join ',') -like '*FullAccess*' }) }
        $entry = & $find
        if (-not $entry) {
            Add-MailboxPermission -Identity $mailbox.Identity -User $Trustee -AccessRights FullAccess `
                -InheritanceType All -AutoMapping $AutoMapping | Out-Null
            $changed = $true
            $entry = & $find
        }
        $name = "$($entry[0].User)"
        $rights = @($entry[0].AccessRights | ForEach-Object { "$_" -split ',\s*' })
    }
    'SendAs' {
        $find = { @(Get-ADPermission -Identity $mailbox.DistinguishedName -User $Trustee |
                    Where-Object { -not $_.IsInherited -and -not $_.Deny -and ($_.ExtendedRights -join ',') -like '*Send-As*' }) }
        $entry = & $find
        if (-not $entry) {
            Add-ADPermission -Identity $mailbox.DistinguishedName -User $Trustee -ExtendedRights 'Send As' | Out-Null
            $changed = $true
            $entry = & $find
        }
        $name = "$($entry[0].User)"
        $rights = @($entry[0].ExtendedRights | ForEach-Object { "$_" })
    }
    'SendOnBehalf' {
        $recipient = Get-Recipient -Identity $Trustee
        if (-not ($mailbox.GrantSendOnBehalfTo | Where-Object { $_.DistinguishedName -eq $recipient.DistinguishedName })) {
            Set-Mailbox -Identity $mailbox.Identity -GrantSendOnBehalfTo @{ Add = $recipient.DistinguishedName }
            $changed = $true
        }
        $name = "$($recipient.Identity)"
        $rights = @('SendOnBehalf')
    }
}

$rows = [pscustomobject]@{
    ExchangeGuid       = $mailbox.ExchangeGuid.ToString()
    PrimarySmtpAddress = $mailbox.PrimarySmtpAddress.ToString()
    Permission         = $Permission
    Trustee            = $name
    AccessRights       = $rights
    Changed            = $changed
}
ConvertTo-Json -InputObject @($rows) -Depth 4 -Compress
