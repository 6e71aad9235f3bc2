# The mailbox exports whose PST file has been on the export share longer than the retention:
# requests finished (Completed, CompletedWithWarning) before $CompletedBefore whose file is a .pst
# under $ShareRoot (no '.' or '..' segment), the oldest $Limit, each removed. Remove-MailboxExportRequest never deletes the
# file: the panel deletes it over SMB afterwards. Every request is printed with whether its removal
# worked, so the panel records the export even when it did not (it is listed again next run).
param(
    [Parameter(Mandatory = $true)][datetime]$CompletedBefore,
    [Parameter(Mandatory = $true)][string]$ShareRoot,
    [Parameter(Mandatory = $true)][int]$Limit
)
$ErrorActionPreference = 'Stop'
if (-not (Get-PSSnapin -Name Microsoft.Exchange.Management.PowerShell.SnapIn -ErrorAction SilentlyContinue)) {
    Add-PSSnapin -Name Microsoft.Exchange.Management.PowerShell.SnapIn
}

$root = $ShareRoot.TrimEnd('\') + '\'
$cutoff = $CompletedBefore.ToUniversalTime()
$finished = @(Get-MailboxExportRequest -ResultSize Unlimited |
    Where-Object { $_.Status -eq 'Completed' -or $_.Status -eq 'CompletedWithWarning' })
$due = @($finished | Get-MailboxExportRequestStatistics |
    Where-Object { $_.CompletionTimestamp -and $_.CompletionTimestamp.ToUniversalTime() -lt $cutoff -and
                   $_.FilePath -and $_.FilePath.StartsWith($root, [System.StringComparison]::OrdinalIgnoreCase) -and
                   $_.FilePath.EndsWith('.pst', [System.StringComparison]::OrdinalIgnoreCase) -and
                   $_.FilePath -notmatch '\\\.\.?(\\|$)' } |
    Sort-Object -Property CompletionTimestamp | Select-Object -First $Limit)
$rows = @(foreach ($request in $due) {
    $removed = $false
    $failure = $null
    try {
        Remove-MailboxExportRequest -Identity $request.Identity -Confirm:$false
        $removed = $true
    } catch {
        $failure = $_.Exception.Message
    }
    [pscustomobject]@{
        RequestGuid         = [string]$request.RequestGuid
        Identity            = [string]$request.Identity
        FilePath            = [string]$request.FilePath
        CompletionTimestamp = $request.CompletionTimestamp.ToUniversalTime().ToString('o')
        Removed             = $removed
        Error               = $failure
    }
})
ConvertTo-Json -InputObject @($rows) -Depth 4 -Compress
