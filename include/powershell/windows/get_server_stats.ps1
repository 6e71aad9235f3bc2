# One resource sample of a Windows server: total CPU and available memory (performance counters),
# physical memory, the fixed volumes with a drive letter, and every service's state.
# Sizes in bytes; enum values as their names.
param()
$ErrorActionPreference = 'Stop'

$samples = (Get-Counter -Counter '\Processor(_Total)\% Processor Time', '\Memory\Available Bytes').CounterSamples
$cpu = ($samples | Where-Object { $_.Path -like '*\processor(_total)\% processor time' }).CookedValue
$available = ($samples | Where-Object { $_.Path -like '*\memory\available bytes' }).CookedValue
$system = Get-CimInstance -ClassName Win32_ComputerSystem

$volumes = foreach ($volume in Get-Volume | Where-Object { $_.DriveLetter -and $_.DriveType.ToString() -eq 'Fixed' }) {
    [pscustomobject]@{
        DriveLetter     = [string]$volume.DriveLetter
        FileSystemLabel = $volume.FileSystemLabel
        FileSystem      = $volume.FileSystem
        Size            = [int64]$volume.Size
        SizeRemaining   = [int64]$volume.SizeRemaining
        HealthStatus    = $volume.HealthStatus.ToString()
    }
}
$services = foreach ($service in Get-Service) {
    [pscustomobject]@{
        Name        = $service.Name
        DisplayName = $service.DisplayName
        Status      = $service.Status.ToString()
        StartType   = $service.StartType.ToString()
    }
}
$row = [pscustomobject]@{
    ComputerName         = $env:COMPUTERNAME
    CpuPercent           = [math]::Round([double]$cpu, 2)
    MemoryTotalBytes     = [int64]$system.TotalPhysicalMemory
    MemoryAvailableBytes = [int64]$available
    Volumes              = @($volumes)
    Services             = @($services)
}
ConvertTo-Json -InputObject @($row) -Depth 4 -Compress
