# Bare-metal inventory of a Windows server: the machine (Win32_ComputerSystem), its firmware
# (Win32_BIOS), processors (Win32_Processor, one instance per socket), operating system and
# physical network adapters. One object; sizes in bytes, dates in UTC ISO-8601.
param()
$ErrorActionPreference = 'Stop'

$system = Get-CimInstance -ClassName Win32_ComputerSystem
$bios = Get-CimInstance -ClassName Win32_BIOS
$os = Get-CimInstance -ClassName Win32_OperatingSystem
$cpus = @(Get-CimInstance -ClassName Win32_Processor)
$nics = foreach ($nic in Get-NetAdapter -Physical) {
    [pscustomobject]@{
        Name                 = $nic.Name
        InterfaceDescription = $nic.InterfaceDescription
        MacAddress           = $nic.MacAddress
        LinkSpeedBps         = [int64]$nic.Speed
        Status               = [string]$nic.Status
    }
}
$row = [pscustomobject]@{
    ComputerName        = $system.Name
    Manufacturer        = $system.Manufacturer
    Model               = $system.Model
    SerialNumber        = $bios.SerialNumber
    BiosManufacturer    = $bios.Manufacturer
    BiosVersion         = $bios.SMBIOSBIOSVersion
    BiosReleaseDate     = if ($bios.ReleaseDate) { $bios.ReleaseDate.ToUniversalTime().ToString('o') } else { $null }
    ProcessorName       = if ($cpus.Count) { $cpus[0].Name.Trim() } else { $null }
    ProcessorSockets    = $cpus.Count
    ProcessorCores      = [int]($cpus | Measure-Object -Property NumberOfCores -Sum).Sum
    LogicalProcessors   = [int]($cpus | Measure-Object -Property NumberOfLogicalProcessors -Sum).Sum
    TotalPhysicalMemory = [int64]$system.TotalPhysicalMemory
    OsName              = $os.Caption
    OsVersion           = $os.Version
    NetworkAdapters     = @($nics)
}
ConvertTo-Json -InputObject @($row) -Depth 4 -Compress
