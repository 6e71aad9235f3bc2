# The usage of one hosted organisation: every mailbox in its OU, what kind it is, the database it
# lives in and its statistics (Get-MailboxStatistics asks the mailbox's own database, wherever it
# is mounted). A mailbox never logged on to may have no statistics yet: its sizes are null.
param(
    [Parameter(Mandatory = $true)][string]$OrganizationalUnit
)
$ErrorActionPreference = 'Stop'
if (-not (Get-PSSnapin -Name Microsoft.Exchange.Management.PowerShell.SnapIn -ErrorAction SilentlyContinue)) {
    Add-PSSnapin -Name Microsoft.Exchange.Management.PowerShell.SnapIn
}

function ConvertTo-ByteCount($Value) {
    if ($null -eq $Value) { return $null }
    return [int64]$Value.ToBytes()
}

$mailboxes = @(Get-Mailbox -OrganizationalUnit $OrganizationalUnit -ResultSize Unlimited -WarningAction SilentlyContinue)
$rows = @(foreach ($mailbox in $mailboxes) {
    $statistics = Get-MailboxStatistics -Identity $mailbox.Identity -WarningAction SilentlyContinue
    [pscustomobject]@{
        ExchangeGuid         = [string]$mailbox.ExchangeGuid
        PrimarySmtpAddress   = [string]$mailbox.PrimarySmtpAddress
        RecipientTypeDetails = [string]$mailbox.RecipientTypeDetails
        Database             = [string]$mailbox.Database.Name
        DatabaseGuid         = [string]$mailbox.Database.ObjectGuid
        TotalItemSize        = if ($statistics) { ConvertTo-ByteCount $statistics.TotalItemSize.Value } else { $null }
        TotalDeletedItemSize = if ($statistics) { ConvertTo-ByteCount $statistics.TotalDeletedItemSize.Value } else { $null }
        ItemCount            = if ($statistics) { [int64]$statistics.ItemCount } else { $null }
    }
})
ConvertTo-Json -InputObject @($rows) -Depth 4 -Compress
