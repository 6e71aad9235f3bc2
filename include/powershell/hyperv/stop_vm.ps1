# Stops a VM unless it is off already: a guest shutdown through the integration services
# (Stop-VM -Force), or with -TurnOff a power-off.
param(
    [string]$Id,
    [string]$Name,
    [switch]$TurnOff
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
if ($before -ne 'Off') {
    if ($TurnOff) { Stop-VM -VM $vm -TurnOff -Force } else { Stop-VM -VM $vm -Force }
}
$vm = Get-VM -Id $vm.Id
$row = ConvertTo-PanelVM $vm @{ PreviousState = $before; Changed = ($before -ne 'Off') }
ConvertTo-Json -InputObject @($row) -Depth 4 -Compress
