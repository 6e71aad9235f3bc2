# The "recycle bin": disconnected mailboxes (removed or disabled, kept until their database's
# retention ends) in the databases named, or in every database of this server.
param(
    [string[]]$Database = @()
)
$ErrorActionPreference = 'Stop'
if (-not (Get-PSSnapin -Name Microsoft.Exchange.Management.PowerShell.SnapIn -ErrorAction SilentlyContinue)) {
    Add-PSSnapin -Name Microsoft.Exchange.Management.PowerShell.SnapIn
}

$databases = if ($Database.Count -gt 0) {
    @($Database | ForEach-Object { Get-MailboxDatabase -Identity $_ })
} else {
    @(Get-MailboxDatabase -Server $env:COMPUTERNAME)
}
$rows = @(foreach ($db in $databases) {
    foreach ($statistics in @(Get-MailboxStatistics -Database $db.Identity | Where-Object { $_.DisconnectReason })) {
        [pscustomobject]@{
            DisplayName      = $statistics.DisplayName
            MailboxGuid      = $statistics.MailboxGuid.ToString()
            Database         = "$($statistics.Database)"
            DisconnectReason = "$($statistics.DisconnectReason)"
            DisconnectDate   = if ($statistics.DisconnectDate) { $statistics.DisconnectDate.ToUniversalTime().ToString('o') } else { $null }
            TotalItemSize    = "$($statistics.TotalItemSize)"
        }
    }
})
ConvertTo-Json -InputObject @($rows) -Depth 4 -Compress
