# Sets a VM's processor count (Set-VMProcessor) and startup memory (Set-VMMemory) to the values
# given; a value already set is left alone. Hyper-V refuses a processor change while the VM runs.
param(
    [string]$Id,
    [string]$Name,
    [int]$ProcessorCount,
    [int64]$MemoryStartupBytes
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
$changed = @()
if ($ProcessorCount -gt 0 -and $vm.ProcessorCount -ne $ProcessorCount) {
    Set-VMProcessor -VM $vm -Count $ProcessorCount
    $changed += 'ProcessorCount'
}
if ($MemoryStartupBytes -gt 0 -and $vm.MemoryStartup -ne $MemoryStartupBytes) {
    Set-VMMemory -VM $vm -StartupBytes $MemoryStartupBytes
    $changed += 'MemoryStartup'
}
$vm = Get-VM -Id $vm.Id
$row = ConvertTo-PanelVM $vm @{ Changed = @($changed) }
ConvertTo-Json -InputObject @($row) -Depth 4 -Compress
