# The values of registry keys (not their subkeys), as the peer sync compares them: one row per
# value with its kind; MultiString as an array, Binary as Base64, numbers as numbers. A key that
# does not exist gives one row with Exists = $false; a key without values one row with Name = $null.
param(
    [Parameter(Mandatory = $true)][ValidatePattern('^HK(LM|CU):\\')][string[]]$Keys
)
$ErrorActionPreference = 'Stop'

$rows = foreach ($path in $Keys) {
    if (-not (Test-Path -LiteralPath $path)) {
        [pscustomobject]@{ Key = $path; Exists = $false; Name = $null; Kind = $null; Value = $null }
        continue
    }
    $key = Get-Item -LiteralPath $path
    $names = @($key.GetValueNames())
    if ($names.Count -eq 0) {
        [pscustomobject]@{ Key = $path; Exists = $true; Name = $null; Kind = $null; Value = $null }
    }
    foreach ($name in $names) {
        $kind = $key.GetValueKind($name).ToString()
        $raw = $key.GetValue($name, $null, 'DoNotExpandEnvironmentNames')
        $value = switch ($kind) {
            'Binary'      { [Convert]::ToBase64String([byte[]]$raw) }
            'MultiString' { , @($raw) }
            default       { $raw }
        }
        [pscustomobject]@{ Key = $path; Exists = $true; Name = $name; Kind = $kind; Value = $value }
    }
}
ConvertTo-Json -InputObject @($rows) -Depth 4 -Compress
