# Storage used by Work Folders users of one sync share: per user, the bytes and files in the user's
# folder under the share's path, and the devices syncing it (Get-SyncUserStatus: one status per
# device; none for a user who never synced). $User[i] (DOMAIN\alias, as Get-SyncUserStatus wants it)
# pairs with $Folder[i], the user folder's name the panel derived from the share's UserFolderName.
# Sizes in bytes, times ISO-8601 UTC. Not yet run against a real Windows Server.
param(
    [Parameter(Mandatory = $true)][string]$SyncShare,
    [Parameter(Mandatory = $true)][string[]]$User,
    [Parameter(Mandatory = $true)][string[]]$Folder
)
$ErrorActionPreference = 'Stop'
if ($User.Count -ne $Folder.Count) { throw "User and Folder must pair up ($($User.Count) users, $($Folder.Count) folders)" }

$share = Get-SyncShare -Name $SyncShare
$rows = for ($i = 0; $i -lt $User.Count; $i++) {
    $path = Join-Path -Path $share.Path -ChildPath $Folder[$i]
    $found = Test-Path -LiteralPath $path -PathType Container
    $bytes = [int64]0
    $files = [int64]0
    if ($found) {
        $measure = Get-ChildItem -LiteralPath $path -Recurse -File -Force -ErrorAction SilentlyContinue |
            Measure-Object -Property Length -Sum
        $bytes = [int64]$measure.Sum
        $files = [int64]$measure.Count
    }
    $status = @(Get-SyncUserStatus -User $User[$i] -SyncShare $SyncShare -ErrorAction SilentlyContinue)
    $last = $status | Where-Object { $_.LastSuccessfulSync } | Sort-Object LastSuccessfulSync -Descending |
        Select-Object -First 1
    [pscustomobject]@{
        User               = $User[$i]
        Folder             = $Folder[$i]
        FolderFound        = [bool]$found
        UsedBytes          = $bytes
        FileCount          = $files
        Devices            = $status.Count
        LastSuccessfulSync = if ($last) { ([datetime]$last.LastSuccessfulSync).ToUniversalTime().ToString('o') } else { $null }
    }
}
$out = @($rows | Select-Object User, Folder, FolderFound, UsedBytes, FileCount, Devices, LastSuccessfulSync)
ConvertTo-Json -InputObject $out -Depth 3 -Compress
