# Sets one registry value (creating its key when missing) and returns it as read back afterwards,
# in get_registry_value's shape. Setting a value is a state, not a toggle: applying twice is the same.
param(
    [Parameter(Mandatory = $true)][string]$Path,
    [Parameter(Mandatory = $true)][string]$Name,
    [Parameter(Mandatory = $true)][ValidateSet('String', 'ExpandString', 'DWord', 'QWord')][string]$Type,
    [Parameter(Mandatory = $true)]$Value
)
$ErrorActionPreference = 'Stop'

if (-not (Test-Path -LiteralPath $Path)) { New-Item -Path $Path -Force | Out-Null }
New-ItemProperty -LiteralPath $Path -Name $Name -PropertyType $Type -Value $Value -Force | Out-Null
$key = Get-Item -LiteralPath $Path
$row = [pscustomobject]@{
    Path   = $Path
    Name   = $Name
    Exists = $true
    Type   = $key.GetValueKind($Name).ToString()
    Value  = $key.GetValue($Name, $null, 'DoNotExpandEnvironmentNames')
}
ConvertTo-Json -InputObject @($row) -Depth 2 -Compress
