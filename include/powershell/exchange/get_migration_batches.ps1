# The organisation's mailbox migration batches with their counts and times, and for a batch with
# failed users the first $FailedUsersPerBatch of them with Exchange's error summary, so the panel
# can tell the customer which mailboxes did not move.
param(
    [ValidateRange(0, 1000)][int]$FailedUsersPerBatch = 50
)
$ErrorActionPreference = 'Stop'
if (-not (Get-PSSnapin -Name Microsoft.Exchange.Management.PowerShell.SnapIn -ErrorAction SilentlyContinue)) {
    Add-PSSnapin -Name Microsoft.Exchange.Management.PowerShell.SnapIn
}

function ConvertTo-UtcText($Value) {
    if ($null -eq $Value) { return $null }
    return ([datetime]$Value).ToUniversalTime().ToString('o')
}

$rows = @(foreach ($batch in Get-MigrationBatch -WarningAction SilentlyContinue) {
    $failedUsers = @()
    if ($FailedUsersPerBatch -gt 0 -and [int]$batch.FailedCount -gt 0) {
        $failedUsers = @(Get-MigrationUser -BatchId $batch.Identity -Status Failed -ResultSize $FailedUsersPerBatch |
            ForEach-Object {
                [pscustomobject]@{
                    Identity               = [string]$_.Identity
                    Status                 = [string]$_.Status
                    ErrorSummary           = [string]$_.ErrorSummary
                    LastSuccessfulSyncTime = ConvertTo-UtcText $_.LastSuccessfulSyncTime
                }
            })
    }
    [pscustomobject]@{
        Identity           = [string]$batch.Identity
        BatchGuid          = [string]$batch.BatchGuid
        Status             = [string]$batch.Status
        MigrationType      = [string]$batch.MigrationType
        TotalCount         = [int]$batch.TotalCount
        SyncedCount        = [int]$batch.SyncedCount
        FinalizedCount     = [int]$batch.FinalizedCount
        FailedCount        = [int]$batch.FailedCount
        NotificationEmails = @($batch.NotificationEmails | ForEach-Object { [string]$_ })
        CreationDateTime   = ConvertTo-UtcText $batch.CreationDateTime
        LastSyncedDateTime = ConvertTo-UtcText $batch.LastSyncedDateTime
        FinalizedDateTime  = ConvertTo-UtcText $batch.FinalizedDateTime
        FailedUsers        = $failedUsers
    }
})
ConvertTo-Json -InputObject @($rows) -Depth 4 -Compress
