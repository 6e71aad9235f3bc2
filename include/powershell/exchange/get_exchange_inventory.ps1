# What this Exchange server is: Get-ExchangeServer (edition, build, roles, AD site) and the
# machine under it (Windows version and last boot, make and model, processors, memory).
param(
    [Parameter(Mandatory = $true)][string]$Server
)
$ErrorActionPreference = 'Stop'
if (-not (Get-PSSnapin -Name Microsoft.Exchange.Management.PowerShell.SnapIn -ErrorAction SilentlyContinue)) {
    Add-PSSnapin -Name Microsoft.Exchange.Management.PowerShell.SnapIn
}

$exchange = Get-ExchangeServer -Identity $Server
$os = Get-CimInstance -ClassName Win32_OperatingSystem
$computer = Get-CimInstance -ClassName Win32_ComputerSystem
$processors = @(Get-CimInstance -ClassName Win32_Processor | ForEach-Object {
    [pscustomobject]@{
        Name                      = ([string]$_.Name).Trim()
        NumberOfCores             = [int]$_.NumberOfCores
        NumberOfLogicalProcessors = [int]$_.NumberOfLogicalProcessors
    }
})
$inventory = [pscustomobject]@{
    Name                = $exchange.Name
    Fqdn                = [string]$exchange.Fqdn
    Edition             = [string]$exchange.Edition
    AdminDisplayVersion = [string]$exchange.AdminDisplayVersion
    ServerRole          = [string]$exchange.ServerRole
    Site                = [string]$exchange.Site
    OSCaption           = $os.Caption
    OSVersion           = $os.Version
    LastBootUpTime      = $os.LastBootUpTime.ToUniversalTime().ToString('o')
    Manufacturer        = $computer.Manufacturer
    Model               = $computer.Model
    TotalPhysicalMemory = [int64]$computer.TotalPhysicalMemory
    Processors          = $processors
}
ConvertTo-Json -InputObject @($inventory) -Depth 4 -Compress
