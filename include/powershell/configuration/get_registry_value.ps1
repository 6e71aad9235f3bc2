# Reads one registry value as the configuration studio compares it: whether it exists, its kind
# (RegistryValueKind: String, ExpandString, DWord, QWord) and its value. A missing key or value is
# reported (Exists = false), not an error: that is drift, not a failure.
param(
    [Parameter(Mandatory = $true)][string]$Path,
    [Parameter(Mandatory = $true)][string]$Name
)
$ErrorActionPreference = 'Stop'

$row = [pscustomobject]@{ Path = $Path; Name = $Name; Exists = $false; Type = $null; Value = $null }
if (Test-Path -LiteralPath $Path) {
    $key = Get-Item -LiteralPath $Path
    if ($key.GetValueNames() -contains $Name) {
        $row.Exists = $true
        $row.Type = $key.GetValueKind($Name).ToString()
        $row.Value = $key.GetValue($Name, $null, 'DoNotExpandEnvironmentNames')
    }
}
ConvertTo-Json -InputObject @($row) -Depth 2 -Compress
