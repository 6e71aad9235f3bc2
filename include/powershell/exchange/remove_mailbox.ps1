# Removes a mailbox into the "recycle bin": Remove-Mailbox (or Disable-Mailbox, keeping the AD user)
# leaves a disconnected mailbox in its database, recoverable until it is purged
# (remove_store_mailbox) or the database's retention ends. A mailbox already gone is reported as
# such. Confirmed by this script's own ShouldProcess: the caller passes Confirm=$false.
[CmdletBinding(SupportsShouldProcess = $true, ConfirmImpact = 'High')]
param(
    [Parameter(Mandatory = $true)][string]$Identity,
    [bool]$KeepADUser = $false
)
$ErrorActionPreference = 'Stop'
if (-not (Get-PSSnapin -Name Microsoft.Exchange.Management.PowerShell.SnapIn -ErrorAction SilentlyContinue)) {
    Add-PSSnapin -Name Microsoft.Exchange.Management.PowerShell.SnapIn
}

$mailbox = Get-Mailbox -Identity $Identity -ErrorAction SilentlyContinue
$rows = [pscustomobject]@{ Identity = $Identity; ExchangeGuid = $null; Database = $null; Removed = $false; AlreadyAbsent = $true }
if ($mailbox -and $PSCmdlet.ShouldProcess("$($mailbox.Identity)", 'Remove mailbox')) {
    if ($KeepADUser) {
        Disable-Mailbox -Identity $mailbox.Identity -Confirm:$false
    } else {
        Remove-Mailbox -Identity $mailbox.Identity -Confirm:$false
    }
    $rows = [pscustomobject]@{
        Identity      = $Identity
        ExchangeGuid  = $mailbox.ExchangeGuid.ToString()
        Database      = "$($mailbox.Database)"
        Removed       = $true
        AlreadyAbsent = $false
    }
}
ConvertTo-Json -InputObject @($rows) -Depth 4 -Compress
