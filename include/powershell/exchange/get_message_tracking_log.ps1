# The message-tracking events this server logged between $Start and $End, at most $Limit + 1 of
# them: more than $Limit rows tells the caller the answer was cut, and it asks again for shorter
# spans (the whole answer travels as one JSON text, so it is kept bounded). $Start and $End come
# as ISO-8601 UTC text, because PSRP clients cannot send DateTime values; [datetime] turns them
# into the server's local time, which is what Get-MessageTrackingLog compares with.
param(
    [Parameter(Mandatory = $true)][string]$Server,
    [Parameter(Mandatory = $true)][datetime]$Start,
    [Parameter(Mandatory = $true)][datetime]$End,
    [ValidateRange(1, 100000)][int]$Limit = 5000
)
$ErrorActionPreference = 'Stop'
if (-not (Get-PSSnapin -Name Microsoft.Exchange.Management.PowerShell.SnapIn -ErrorAction SilentlyContinue)) {
    Add-PSSnapin -Name Microsoft.Exchange.Management.PowerShell.SnapIn
}

$entries = Get-MessageTrackingLog -Server $Server -Start $Start -End $End -ResultSize ($Limit + 1) -WarningAction SilentlyContinue
$rows = @(foreach ($entry in $entries) {
    [pscustomobject]@{
        Timestamp         = $entry.Timestamp.ToUniversalTime().ToString('o')
        EventId           = [string]$entry.EventId
        Source            = [string]$entry.Source
        Sender            = [string]$entry.Sender
        Recipients        = @($entry.Recipients | ForEach-Object { [string]$_ })
        RecipientCount    = [int]$entry.RecipientCount
        MessageSubject    = [string]$entry.MessageSubject
        TotalBytes        = [int64]$entry.TotalBytes
        MessageId         = [string]$entry.MessageId
        InternalMessageId = [int64]$entry.InternalMessageId
        ServerHostname    = [string]$entry.ServerHostname
    }
})
ConvertTo-Json -InputObject @($rows) -Depth 4 -Compress
