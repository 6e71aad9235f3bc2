# Sets the FSRM quota of a folder to SizeBytes (hard limit unless -SoftLimit): New-FsrmQuota when
# the folder has none, Set-FsrmQuota when its size differs, nothing when it is already that size —
# a state, so a retried change_quota job does its work once.
param(
    [Parameter(Mandatory = $true)][string]$Path,
    [Parameter(Mandatory = $true)][ValidateRange(1048576, [int64]::MaxValue)][int64]$SizeBytes,
    [switch]$SoftLimit
)
$ErrorActionPreference = 'Stop'

$quota = @(Get-FsrmQuota) | Where-Object { $_.Path.TrimEnd('\') -eq $Path.TrimEnd('\') }
$created = $false
$changed = $false
if (-not $quota) {
    $quota = New-FsrmQuota -Path $Path -Size $SizeBytes -SoftLimit:$SoftLimit
    $created = $true
} elseif ($quota.Size -ne $SizeBytes -or [bool]$quota.SoftLimit -ne [bool]$SoftLimit) {
    $quota = Set-FsrmQuota -Path $quota.Path -Size $SizeBytes -SoftLimit:$SoftLimit -PassThru
    $changed = $true
}
$row = $quota | Select-Object Path, @{ Name = 'Size'; Expression = { [int64]$_.Size } },
    @{ Name = 'Usage'; Expression = { [int64]$_.Usage } }, SoftLimit,
    @{ Name = 'Created'; Expression = { $created } }, @{ Name = 'Changed'; Expression = { $changed } }
ConvertTo-Json -InputObject @($row) -Depth 2 -Compress
