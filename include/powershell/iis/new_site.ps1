# Creates an IIS web site (WebAdministration) with its own application pool and content folder,
# bound to http://<HostName>:<Port>, unless a site of that exact name exists — which is then
# returned as it is (Created = false): a retried job never makes a second site.
param(
    [Parameter(Mandatory = $true)][string]$Name,
    [Parameter(Mandatory = $true)][string]$HostName,
    [Parameter(Mandatory = $true)][string]$PhysicalPath,
    [Parameter(Mandatory = $true)][string]$AppPool,
    [ValidateRange(1, 65535)][int]$Port = 80
)
$ErrorActionPreference = 'Stop'
Import-Module WebAdministration

# exact names: -Name of the WebAdministration cmdlets would read [ ] * ? as wildcards
$site = Get-Website | Where-Object { $_.Name -eq $Name }
$created = $false
if (-not $site) {
    if (-not (Get-ChildItem IIS:\AppPools | Where-Object { $_.Name -eq $AppPool })) {
        New-WebAppPool -Name $AppPool | Out-Null
        Set-ItemProperty -LiteralPath "IIS:\AppPools\$AppPool" -Name managedRuntimeVersion -Value ''
    }
    if (-not (Test-Path -LiteralPath $PhysicalPath -PathType Container)) {
        New-Item -ItemType Directory -Path $PhysicalPath -Force | Out-Null
    }
    New-Website -Name $Name -PhysicalPath $PhysicalPath -ApplicationPool $AppPool -HostHeader $HostName `
        -Port $Port -IPAddress '*' | Out-Null
    $site = Get-Website | Where-Object { $_.Name -eq $Name }
    $created = $true
}
$row = $site | Select-Object Name, Id, State, PhysicalPath, ApplicationPool,
    @{ Name = 'Bindings'; Expression = { @($_.Bindings.Collection | ForEach-Object { "$($_.protocol) $($_.bindingInformation)" }) } },
    @{ Name = 'Created'; Expression = { $created } }
ConvertTo-Json -InputObject @($row) -Depth 3 -Compress
