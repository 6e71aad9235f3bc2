# Purges one disconnected mailbox from its database for good (Remove-StoreMailbox): the end of
# the recycle bin. Confirmed by this script's own ShouldProcess: the caller passes Confirm=$false.
[CmdletBinding(SupportsShouldProcess = $true, ConfirmImpact = 'High')]
param(
    [Parameter(Mandatory = $true)][string]$Identity,
    [Parameter(Mandatory = $true)][string]$Database,
    [ValidateSet('Disabled', 'SoftDeleted')][string]$MailboxState = 'Disabled'
)
$ErrorActionPreference = 'Stop'
if (-not (Get-PSSnapin -Name Microsoft.Exchange.Management.PowerShell.SnapIn -ErrorAction SilentlyContinue)) {
    Add-PSSnapin -Name Microsoft.Exchange.Management.PowerShell.SnapIn
}

$purged = $false
if ($PSCmdlet.ShouldProcess("$Identity in $Database", 'Remove-StoreMailbox')) {
    Remove-StoreMailbox -Identity $Identity -Database $Database -MailboxState $MailboxState -Confirm:$false
    $purged = $true
}
$rows = [pscustomobject]@{ MailboxGuid = $Identity; Database = $Database; MailboxState = $MailboxState; Purged = $purged }
ConvertTo-Json -InputObject @($rows) -Depth 4 -Compress
