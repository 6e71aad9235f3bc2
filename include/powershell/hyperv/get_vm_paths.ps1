# Where each VM of this host keeps its files now, after a storage migration moved them: its folder
# (Get-VM Path, as the inventory reads it) and the virtual disk in each controller slot
# (Get-VMHardDiskDrive; an empty DVD-less slot has no path and is left out).
param()
$ErrorActionPreference = 'Stop'

$rows = @(foreach ($vm in @(Get-VM)) {
    [pscustomobject]@{
        Id       = [string]$vm.Id
        Name     = $vm.Name
        Path     = $vm.Path
        Disks    = @(Get-VMHardDiskDrive -VM $vm | Where-Object { $_.Path } |
            Select-Object @{ n = 'ControllerType'; e = { [string]$_.ControllerType } }, ControllerNumber,
                          ControllerLocation, Path)
    }
})
ConvertTo-Json -InputObject @($rows) -Depth 4 -Compress
