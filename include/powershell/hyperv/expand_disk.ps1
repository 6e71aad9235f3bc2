# Grows one of the VM's virtual disks to the size given (Resize-VHD); a disk that size already is
# left alone, and shrinking is refused.
param(
    [string]$Id,
    [string]$Name,
    [Parameter(Mandatory = $true)][string]$Path,
    [Parameter(Mandatory = $true)][int64]$SizeBytes
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
if (-not @(Get-VMHardDiskDrive -VM $vm | Where-Object { $_.Path -eq $Path }).Count) {
    throw ("{0} is not attached to virtual machine '{1}'" -f $Path, $vm.Name)
}
$vhd = Get-VHD -Path $Path
$resized = $false
if ($vhd.Size -gt $SizeBytes) { throw ("{0} is {1} bytes: it cannot be shrunk to {2}" -f $Path, $vhd.Size, $SizeBytes) }
if ($vhd.Size -lt $SizeBytes) {
    Resize-VHD -Path $Path -SizeBytes $SizeBytes
    $vhd = Get-VHD -Path $Path
    $resized = $true
}
$row = ConvertTo-PanelVM $vm @{
    Disk    = [pscustomobject]@{ Path = $Path; VhdType = $vhd.VhdType.ToString(); VhdFormat = $vhd.VhdFormat.ToString();
                                 FileSize = [int64]$vhd.FileSize; Size = [int64]$vhd.Size }
    Resized = $resized
}
ConvertTo-Json -InputObject @($row) -Depth 4 -Compress
