# Creates a VM (New-VM with a new virtual disk) unless one of that exact name exists, which is then
# returned as it is (Created = false): a retried job never makes a second VM. Without VhdPath the
# disk is <host VirtualHardDiskPath>\<name>.vhdx.
param(
    [Parameter(Mandatory = $true)][string]$Name,
    [ValidateSet(1, 2)][int]$Generation = 2,
    [Parameter(Mandatory = $true)][int64]$MemoryStartupBytes,
    [int]$ProcessorCount = 1,
    [string]$VhdPath,
    [Parameter(Mandatory = $true)][int64]$VhdSizeBytes,
    [string]$SwitchName
)
$ErrorActionPreference = 'Stop'

$existing = @(Get-VM | Where-Object { $_.Name -eq $Name })
if ($existing.Count -gt 1) { throw ("{0} virtual machines on {1} are named '{2}'" -f $existing.Count, $env:COMPUTERNAME, $Name) }
if ($existing.Count -eq 1) {
    $vm = $existing[0]
    $created = $false
} else {
    if (-not $VhdPath) {
        $file = ($Name -replace '[\\/:*?"<>|]', '_') + '.vhdx'
        $VhdPath = [System.IO.Path]::Combine((Get-VMHost).VirtualHardDiskPath, $file)
    }
    $settings = @{ Name = $Name; Generation = $Generation; MemoryStartupBytes = $MemoryStartupBytes
                   NewVHDPath = $VhdPath; NewVHDSizeBytes = $VhdSizeBytes }
    if ($SwitchName) { $settings.SwitchName = $SwitchName }
    $vm = New-VM @settings
    if ($ProcessorCount -gt 1) { Set-VMProcessor -VM $vm -Count $ProcessorCount }
    $vm = Get-VM -Id $vm.Id
    $created = $true
}
$disks = foreach ($drive in @(Get-VMHardDiskDrive -VM $vm | Where-Object { $_.Path -and $null -eq $_.DiskNumber })) {
    $vhd = Get-VHD -Path $drive.Path
    [pscustomobject]@{
        Path               = $drive.Path
        ControllerType     = $drive.ControllerType.ToString()
        ControllerNumber   = $drive.ControllerNumber
        ControllerLocation = $drive.ControllerLocation
        VhdType            = $vhd.VhdType.ToString()
        VhdFormat          = $vhd.VhdFormat.ToString()
        FileSize           = [int64]$vhd.FileSize
        Size               = [int64]$vhd.Size
    }
}
$row = [pscustomobject]@{
    Name           = $vm.Name
    Id             = $vm.Id.ToString()
    State          = $vm.State.ToString()
    Generation     = $vm.Generation
    ProcessorCount = $vm.ProcessorCount
    MemoryStartup  = [int64]$vm.MemoryStartup
    Created        = $created
    Disks          = @($disks)
}
ConvertTo-Json -InputObject @($row) -Depth 4 -Compress
