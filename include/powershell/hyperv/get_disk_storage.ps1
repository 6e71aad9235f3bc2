# Which physical media each virtual disk file lives on: the file's volume (the partition whose
# access path is the longest prefix of the path), that volume's disk and, for a Storage Spaces
# virtual disk, its pool and the pool's physical disks (Get-PhysicalDisk MediaType, BusType).
param(
    [Parameter(Mandatory = $true)][string[]]$Paths
)
$ErrorActionPreference = 'Stop'

$partitions = @(Get-Partition | Where-Object { $_.AccessPaths })
$rows = foreach ($path in $Paths) {
    $best = $null
    $volume = $null
    foreach ($partition in $partitions) {
        foreach ($access in $partition.AccessPaths) {
            if ($access -like '\\?\Volume*') { continue }
            if ($path.StartsWith($access, [System.StringComparison]::OrdinalIgnoreCase) -and
                ($null -eq $volume -or $access.Length -gt $volume.Length)) {
                $best = $partition
                $volume = $access
            }
        }
    }
    $physical = @()
    $pool = $null
    if ($best) {
        $disk = Get-Disk -Number $best.DiskNumber
        $virtual = $null
        try { $virtual = Get-VirtualDisk -Disk $disk } catch { $virtual = $null }
        if ($virtual) {
            $physical = @(Get-PhysicalDisk -VirtualDisk $virtual)
            $pools = @(Get-StoragePool -VirtualDisk $virtual | Where-Object { -not $_.IsPrimordial })
            if ($pools.Count) { $pool = $pools[0].FriendlyName }
        } else {
            $physical = @(Get-PhysicalDisk | Where-Object { $_.DeviceId -eq [string]$disk.Number })
        }
    }
    [pscustomobject]@{
        Path        = $path
        Volume      = $volume
        DiskNumber  = if ($best) { $best.DiskNumber } else { $null }
        StoragePool = $pool
        MediaTypes  = @($physical | ForEach-Object { $_.MediaType.ToString() })
        BusTypes    = @($physical | ForEach-Object { $_.BusType.ToString() })
    }
}
ConvertTo-Json -InputObject @($rows) -Depth 4 -Compress
