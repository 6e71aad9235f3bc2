# Creates a virtual disk file (New-VHD) unless it exists and attaches it to the VM
# (Add-VMHardDiskDrive) unless it is attached; a file attached to another VM is refused.
param(
    [string]$Id,
    [string]$Name,
    [Parameter(Mandatory = $true)][string]$Path,
    [Parameter(Mandatory = $true)][int64]$SizeBytes,
    [ValidateSet('Dynamic', 'Fixed')][string]$VhdType = 'Dynamic'
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

$vm = Get-PanelVM $Id $Name
$elsewhere = @(Get-VM | Where-Object { $_.Id -ne $vm.Id } | Get-VMHardDiskDrive | Where-Object { $_.Path -eq $Path })
if ($elsewhere.Count) { throw ("{0} is attached to virtual machine '{1}'" -f $Path, $elsewhere[0].VMName) }
$created = $false
if (-not [System.IO.File]::Exists($Path)) {
    if ($VhdType -eq 'Fixed') { New-VHD -Path $Path -SizeBytes $SizeBytes -Fixed | Out-Null }
    else { New-VHD -Path $Path -SizeBytes $SizeBytes -Dynamic | Out-Null }
    $created = $true
}
$attached = $false
if (-not @(Get-VMHardDiskDrive -VM $vm | Where-Object { $_.Path -eq $Path }).Count) {
    Add-VMHardDiskDrive -VM $vm -Path $Path
    $attached = $true
}
$drive = @(Get-VMHardDiskDrive -VM $vm | Where-Object { $_.Path -eq $Path })[0]
$vhd = Get-VHD -Path $Path
$row = ConvertTo-PanelVM $vm @{
    Disk = [pscustomobject]@{
        Path               = $drive.Path
        ControllerType     = $drive.ControllerType.ToString()
        ControllerNumber   = $drive.ControllerNumber
        ControllerLocation = $drive.ControllerLocation
        VhdType            = $vhd.VhdType.ToString()
        VhdFormat          = $vhd.VhdFormat.ToString()
        FileSize           = [int64]$vhd.FileSize
        Size               = [int64]$vhd.Size
    }
    Created  = $created
    Attached = $attached
}
ConvertTo-Json -InputObject @($row) -Depth 4 -Compress
