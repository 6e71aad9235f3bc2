# Takes a trustee's full access, send as or send on behalf away from a mailbox; a permission that
# is not there is reported unchanged (a repeated job removes it once). Removing is confirmed by
# this script's own ShouldProcess: the caller passes Confirm=$false, as for any Remove-* cmdlet.
[CmdletBinding(SupportsShouldProcess = $true, ConfirmImpact = 'High')]
param(
    [Parameter(Mandatory = $true)][string]$Identity,
    [Parameter(Mandatory = $true)][string]$Trustee,
    [Parameter(Mandatory = $true)][ValidateSet('FullAccess', 'SendAs', 'SendOnBehalf')][string]$Permission
)
$ErrorActionPreference = 'Stop'
if (-not (Get-PSSnapin -Name Microsoft.Exchange.Management.PowerShell.SnapIn -ErrorAction SilentlyContinue)) {
    Add-PSSnapin -Name Microsoft.Exchange.Management.PowerShell.SnapIn
}

$mailbox = Get-Mailbox -Identity $Identity
$changed = $false
$name = $Trustee
switch ($Permission) {
    'FullAccess' {
        $entry = @(Get-MailboxPermission -Identity $mailbox.Identity -User $Trustee -ErrorAction SilentlyContinue |
                   Where-Object { -not $_.IsInherited -and ($_.AccessRights -join ',') -like '*FullAccess*' })
        if ($entry -and $PSCmdlet.ShouldProcess("$($mailbox.Identity)", "Remove FullAccess of $Trustee")) {
            $name = "$($entry[0].User)"
            Remove-MailboxPermission -Identity $mailbox.Identity -User $Trustee -AccessRights FullAccess `
                -InheritanceType All -Confirm:$false
            $changed = $true
        }
    }
    'SendAs' {
        $entry = @(Get-ADPermission -Identity $mailbox.DistinguishedName -User $Trustee |
                   Where-Object { -not $_.IsInherited -and ($_.ExtendedRights -join ',') -like '*Send-As*' })
        if ($entry -and $PSCmdlet.ShouldProcess("$($mailbox.Identity)", "Remove Send As of $Trustee")) {
            $name = "$($entry[0].User)"
            Remove-ADPermission -Identity $mailbox.DistinguishedName -User $Trustee -ExtendedRights 'Send As' -Confirm:$false
            $changed = $true
        }
    }
    'SendOnBehalf' {
        $recipient = Get-Recipient -Identity $Trustee -ErrorAction SilentlyContinue
        if ($recipient) {
            $name = "$($recipient.Identity)"
            if (($mailbox.GrantSendOnBehalfTo | Where-Object { $_.DistinguishedName -eq $recipient.DistinguishedName }) -and
                $PSCmdlet.ShouldProcess("$($mailbox.Identity)", "Remove SendOnBehalf of $Trustee")) {
                Set-Mailbox -Identity $mailbox.Identity -GrantSendOnBehalfTo @{ Remove = $recipient.DistinguishedName }
                $changed = $true
            }
        }
    }
}

$rows = [pscustomobject]@{
    ExchangeGuid       = $mailbox.ExchangeGuid.ToString()
    PrimarySmtpAddress = $mailbox.PrimarySmtpAddress.ToString()
    Permission         = $Permission
    Trustee            = $name
    Changed            = $changed
}
ConvertTo-Json -InputObject @($rows) -Depth 4 -Compress
