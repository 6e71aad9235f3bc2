# The local disk volumes of this Exchange server, for server_volume_stats, and where the files of
# the mailbox databases with a copy here (active or passive) are, so that the step can tell which
# databases and logs live on each volume. Volumes without a drive letter or mount point (System
# Reserved, recovery) are left out: nothing of Exchange lives there.
param(
    [Parameter(Mandatory = $true)][string]$Server
)
$ErrorActionPreference = 'Stop'
if (-not (Get-PSSnapin -Name Microsoft.Exchange.Management.PowerShell.SnapIn -ErrorAction SilentlyContinue)) {
    Add-PSSnapin -Name Microsoft.Exchange.Management.PowerShell.SnapIn
}

$volumes = @(Get-CimInstance -ClassName Win32_Volume -Filter 'DriveType = 3' |
    Where-Object { $_.Name -notlike '\\?\*' -and $_.Capacity } |
    ForEach-Object {
        [pscustomobject]@{
            Name        = $_.Name
            DriveLetter = $_.DriveLetter
            Label       = $_.Label
            FileSystem  = $_.FileSystem
            Capacity    = [int64]$_.Capacity
            FreeSpace   = [int64]$_.FreeSpace
        }
    })
$databases = @(Get-MailboxDatabase -Server $Server | ForEach-Object {
    [pscustomobject]@{
        Name          = $_.Name
        EdbFilePath   = [string]$_.EdbFilePath
        LogFolderPath = [string]$_.LogFolderPath
    }
})
ConvertTo-Json -InputObject @([pscustomobject]@{ Volumes = $volumes; Databases = $databases }) -Depth 4 -Compress
