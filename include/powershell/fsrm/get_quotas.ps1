# Usage and limit of the FSRM quotas on the given folders (one row per folder, in order).
# All quotas are read once and matched by exact path: Get-FsrmQuota -Path would read [ ] * ? as
# wildcards. A folder without a quota answers Found = false (FSRM measures only quota folders).
param(
    [Parameter(Mandatory = $true)][string[]]$Paths
)
$ErrorActionPreference = 'Stop'

$byPath = @{}
foreach ($quota in @(Get-FsrmQuota)) { $byPath[$quota.Path.TrimEnd('\').ToLowerInvariant()] = $quota }
$rows = foreach ($path in $Paths) {
    $quota = $byPath[$path.TrimEnd('\').ToLowerInvariant()]
    if ($quota) {
        $quota | Select-Object @{ Name = 'Path'; Expression = { $path } }, @{ Name = 'Found'; Expression = { $true } },
            @{ Name = 'Size'; Expression = { [int64]$_.Size } }, @{ Name = 'Usage'; Expression = { [int64]$_.Usage } },
            @{ Name = 'PeakUsage'; Expression = { [int64]$_.PeakUsage } }, SoftLimit, Disabled
    } else {
        [pscustomobject]@{ Path = $path; Found = $false } | Select-Object Path, Found
    }
}
ConvertTo-Json -InputObject @($rows) -Depth 2 -Compress
