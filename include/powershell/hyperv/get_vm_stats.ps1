# One sample of the hypervisor's load (Hyper-V Hypervisor Logical Processor run time) and of every
# VM's CPU, memory and uptime (Get-VM). Sizes in bytes, uptime in whole seconds.
param()
$ErrorActionPreference = 'Stop'

$runTime = (Get-Counter -Counter '\Hyper-V Hypervisor Logical Processor(_Total)\% Total Run Time').CounterSamples[0].CookedValue
$vms = foreach ($vm in Get-VM) {
    [pscustomobject]@{
        Name           = $vm.Name
        Id             = $vm.Id.ToString()
        State          = $vm.State.ToString()
        CPUUsage       = $vm.CPUUsage
        MemoryAssigned = [int64]$vm.MemoryAssigned
        MemoryDemand   = [int64]$vm.MemoryDemand
        Uptime         = [int64][math]::Floor($vm.Uptime.TotalSeconds)
    }
}
$row = [pscustomobject]@{
    ComputerName             = $env:COMPUTERNAME
    HypervisorRunTimePercent = [math]::Round([double]$runTime, 2)
    VMs                      = @($vms)
}
ConvertTo-Json -InputObject @($row) -Depth 4 -Compress
