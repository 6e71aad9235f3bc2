# The mailbox databases whose active copy this server hosts, so that a database of a DAG is
# reported once, by the server where it is mounted. -Status asks the Information Store for what
# only it knows (size, free space, mounted, backups). The mailbox count is of the mailboxes homed
# on the database (Get-Mailbox; disconnected and system mailboxes are not counted).
param(
    [Parameter(Mandatory = $true)][string]$Server
)
$ErrorActionPreference = 'Stop'
if (-not (Get-PSSnapin -Name Microsoft.Exchange.Management.PowerShell.SnapIn -ErrorAction SilentlyContinue)) {
    Add-PSSnapin -Name Microsoft.Exchange.Management.PowerShell.SnapIn
}

function ConvertTo-UtcText($Value) {
    if ($null -eq $Value) { return $null }
    return ([datetime]$Value).ToUniversalTime().ToString('o')
}

function ConvertTo-ByteCount($Value) {
    if ($null -eq $Value) { return $null }
    return [int64]$Value.ToBytes()
}

$databases = @(Get-MailboxDatabase -Server $Server -Status | Where-Object { $_.Server.Name -eq $Server })
$rows = @(foreach ($database in $databases) {
    $mailboxes = Get-Mailbox -Database $database.Identity -ResultSize Unlimited -WarningAction SilentlyContinue |
        Measure-Object
    [pscustomobject]@{
        Name                     = $database.Name
        Guid                     = [string]$database.Guid
        Server                   = $database.Server.Name
        Mounted                  = [bool]$database.Mounted
        DatabaseSize             = ConvertTo-ByteCount $database.DatabaseSize
        AvailableNewMailboxSpace = ConvertTo-ByteCount $database.AvailableNewMailboxSpace
        MailboxCount             = [int]$mailboxes.Count
        LastFullBackup           = ConvertTo-UtcText $database.LastFullBackup
        LastIncrementalBackup    = ConvertTo-UtcText $database.LastIncrementalBackup
        EdbFilePath              = [string]$database.EdbFilePath
        LogFolderPath            = [string]$database.LogFolderPath
        CircularLoggingEnabled   = [bool]$database.CircularLoggingEnabled
    }
})
ConvertTo-Json -InputObject @($rows) -Depth 4 -Compress
