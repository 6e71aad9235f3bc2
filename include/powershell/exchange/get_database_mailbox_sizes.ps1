# The average mailbox size of each mailbox database whose active copy this server hosts (so a
# database of a DAG is measured once): the connected mailboxes' TotalItemSize, summed and counted.
# Disconnected mailboxes (DisconnectReason set) are not counted.
param(
    [Parameter(Mandatory = $true)][string]$Server
)
$ErrorActionPreference = 'Stop'
if (-not (Get-PSSnapin -Name Microsoft.Exchange.Management.PowerShell.SnapIn -ErrorAction SilentlyContinue)) {
    Add-PSSnapin -Name Microsoft.Exchange.Management.PowerShell.SnapIn
}

$databases = @(Get-MailboxDatabase -Server $Server -Status | Where-Object { $_.Server.Name -eq $Server -and $_.Mounted })
$rows = @(foreach ($database in $databases) {
    $sizes = @(Get-MailboxStatistics -Database $database.Identity -WarningAction SilentlyContinue |
        Where-Object { -not $_.DisconnectReason } |
        ForEach-Object { [int64]$_.TotalItemSize.Value.ToBytes() })
    $total = [int64]0
    foreach ($size in $sizes) { $total += $size }
    [pscustomobject]@{
        Name               = $database.Name
        Guid               = [string]$database.Guid
        Server             = $database.Server.Name
        MailboxCount       = $sizes.Count
        TotalItemSizeBytes = $total
    }
})
ConvertTo-Json -InputObject @($rows) -Depth 4 -Compress
