# Deletes a VM (Remove-VM -Force, after turning it off and merging its checkpoints) and moves its
# disk files to <ArchivePath>\<VM id>\, from where the archive clean-up deletes them later.
# KnownDiskPaths (the panel's record of the VM's disks) let a retry archive the disks of a VM that
# an interrupted earlier try already removed. A VM already gone is not an error (Found = false).
param(
    [string]$Id,
    [string]$Name,
    [Parameter(Mandatory = $true)][string]$ArchivePath,
    [string[]]$KnownDiskPaths = @()
)
$ErrorActionPreference = 'Stop'
function Find-PanelVM([string]$Id, [string]$Name) {
    # by GUID when known, else by exact name (Get-VM -Name would treat [ ] * ? as wildcards)
    if ($Id) { $found = @(Get-VM | Where-Object { $_.Id -eq [guid]$Id }) }
    else { $found = @(Get-VM | Where-Object { $_.Name -eq $Name }) }
    if ($found.Count -gt 1) { throw ("{0} virtual machines on {1} are named '{2}'" -f $found.Count, $env:COMPUTERNAME, $Name) }
    if ($found.Count -eq 1) { return $found[0] }
    return $null
}
function Get-PanelVM([string]$Id, [string]$Name) {
    $vm = Find-PanelVM $Id $Name
    if (-not $vm) { throw ("No virtual machine {0} on {1}" -f $(if ($Id) { $Id } else { "'$Name'" }), $env:COMPUTERNAME) }
    return $vm
}
function ConvertTo-PanelVM($vm, [hashtable]$Extra = @{}) {
    $row = [ordered]@{
        Name           = $vm.Name
        Id             = $vm.Id.ToString()
        State          = $vm.State.ToString()
        Generation     = $vm.Generation
        ProcessorCount = $vm.ProcessorCount
        MemoryStartup  = [int64]$vm.MemoryStartup
    }
    foreach ($key in $Extra.Keys) { $row[$key] = $Extra[$key] }
    return [pscustomobject]$row
}

$vm = Find-PanelVM $Id $Name
$found = [bool]$vm
$candidates = @($KnownDiskPaths)
if ($vm) {
    $Id = $vm.Id.ToString()
    $Name = $vm.Name
    if ($vm.State.ToString() -ne 'Off') { Stop-VM -VM $vm -TurnOff -Force }
    $snapshots = @(Get-VMSnapshot -VM $vm)
    if ($snapshots.Count) {
        $snapshots | Remove-VMSnapshot
        $deadline = [DateTime]::UtcNow.AddMinutes(10)
        while (@(Get-VMHardDiskDrive -VM $vm | Where-Object { $_.Path -like '*.avhd*' }).Count) {
            if ([DateTime]::UtcNow -gt $deadline) { throw ("the checkpoints of '{0}' are still merging" -f $vm.Name) }
            Start-Sleep -Seconds 2
        }
    }
    $candidates += @(Get-VMHardDiskDrive -VM $vm | Where-Object { $_.Path -and $null -eq $_.DiskNumber } | ForEach-Object { $_.Path })
    Remove-VM -VM $vm -Force
}
$archived = @()
if ($Id) {
    $inUse = @(Get-VM | Get-VMHardDiskDrive | ForEach-Object { $_.Path })
    $folder = [System.IO.Path]::Combine($ArchivePath, $Id)
    foreach ($path in @($candidates | Select-Object -Unique)) {
        if ($inUse -contains $path) { continue }
        $target = [System.IO.Path]::Combine($folder, [System.IO.Path]::GetFileName($path))
        if ([System.IO.File]::Exists($path)) {
            [System.IO.Directory]::CreateDirectory($folder) | Out-Null
            $size = (Get-Item -LiteralPath $path).Length
            [System.IO.File]::Move($path, $target)
        } elseif ([System.IO.File]::Exists($target)) {
            $size = (Get-Item -LiteralPath $target).Length
        } else { continue }
        $archived += [pscustomobject]@{ Path = $path; ArchivePath = $target; FileSize = [int64]$size }
    }
}
$row = [pscustomobject]@{ Found = $found; Id = $Id; Name = $Name; Archived = @($archived) }
ConvertTo-Json -InputObject @($row) -Depth 4 -Compress
