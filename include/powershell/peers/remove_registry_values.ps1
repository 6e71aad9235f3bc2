# Removes named values of one registry key (the key, its other values and subkeys stay). A value
# already gone counts as removed. Prints one row per name: Removed or Missing.
param(
    [Parameter(Mandatory = $true)][ValidatePattern('^HK(LM|CU):\\')][string]$Key,
    [Parameter(Mandatory = $true)][string[]]$Names
)
$ErrorActionPreference = 'Stop'

$present = if (Test-Path -LiteralPath $Key) { @((Get-Item -LiteralPath $Key).GetValueNames()) } else { @() }
$rows = foreach ($name in $Names) {
    if ($present -contains $name) {
        Remove-ItemProperty -LiteralPath $Key -Name $name
        [pscustomobject]@{ Key = $Key; Name = $name; Removed = $true; Missing = $false }
    } else {
        [pscustomobject]@{ Key = $Key; Name = $name; Removed = $false; Missing = $true }
    }
}
ConvertTo-Json -InputObject @($rows) -Depth 2 -Compress
