# Restarts a VM: a guest shutdown then a start (with -Hard a reset, Restart-VM -Force); a VM that is
# off is started.
param(
    [string]$Id,
    [string]$Name,
    [switch]$Hard
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
$before = $vm.State.ToString()
if ($before -eq 'Running' -and $Hard) { Restart-VM -VM $vm -Force }
elseif ($before -eq 'Running') { Stop-VM -VM $vm -Force; Start-VM -VM $vm }
elseif ($before -eq 'Paused') { Resume-VM -VM $vm }
else { Start-VM -VM $vm }
$vm = Get-VM -Id $vm.Id
$row = ConvertTo-PanelVM $vm @{ PreviousState = $before; Changed = $true }
ConvertTo-Json -InputObject @($row) -Depth 4 -Compress
