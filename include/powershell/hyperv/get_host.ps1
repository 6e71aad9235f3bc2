# The Hyper-V host itself (Get-VMHost) with its operating system and default VM configuration version.
param()
$ErrorActionPreference = 'Stop'

$vmHost = Get-VMHost
$os = Get-CimInstance -ClassName Win32_OperatingSystem
$default = Get-VMHostSupportedVersion -Default
$row = [pscustomobject]@{
    ComputerName          = $vmHost.ComputerName
    OsName                = $os.Caption
    OsVersion             = $os.Version
    DefaultVmVersion      = $default.Version.ToString()
    LogicalProcessorCount = $vmHost.LogicalProcessorCount
    MemoryCapacity        = [int64]$vmHost.MemoryCapacity
    VirtualMachinePath    = $vmHost.VirtualMachinePath
    VirtualHardDiskPath   = $vmHost.VirtualHardDiskPath
    NumaSpanningEnabled   = $vmHost.NumaSpanningEnabled
}
ConvertTo-Json -InputObject @($row) -Depth 4 -Compress
