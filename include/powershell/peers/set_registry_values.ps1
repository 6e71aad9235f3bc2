# Sets values of one registry key (created if missing; existing values and subkeys are kept) from
# ValuesJson: [{"Name", "Kind", "Value"}] with Kind String, ExpandString, DWord, QWord,
# MultiString (an array) or Binary (Base64). The values arrive as one JSON parameter, never inside
# the script text. Prints one row per value set.
param(
    [Parameter(Mandatory = $true)][ValidatePattern('^HK(LM|CU):\\')][string]$Key,
    [Parameter(Mandatory = $true)][string]$ValuesJson
)
$ErrorActionPreference = 'Stop'

if (-not (Test-Path -LiteralPath $Key)) { New-Item -Path $Key | Out-Null }
$rows = foreach ($item in @(ConvertFrom-Json -InputObject $ValuesJson)) {
    $value = switch ($item.Kind) {
        'String'       { [string]$item.Value }
        'ExpandString' { [string]$item.Value }
        'DWord'        { [int32][int64]$item.Value }
        'QWord'        { [int64]$item.Value }
        'MultiString'  { [string[]]@($item.Value) }
        'Binary'       { [Convert]::FromBase64String([string]$item.Value) }
        default        { throw "unsupported registry value kind $($item.Kind)" }
    }
    New-ItemProperty -LiteralPath $Key -Name $item.Name -PropertyType $item.Kind -Value $value -Force | Out-Null
    [pscustomobject]@{ Key = $Key; Name = $item.Name; Kind = $item.Kind }
}
ConvertTo-Json -InputObject @($rows) -Depth 2 -Compress
