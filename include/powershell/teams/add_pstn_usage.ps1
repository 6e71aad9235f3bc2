# Adds one PSTN usage to the tenant's global list (Set-CsOnlinePstnUsages keeps the others).
param(
    [Parameter(Mandatory = $true)][string]$Usage
)
$ErrorActionPreference = 'Stop'
Set-CsOnlinePstnUsages -Identity Global -Usage @{ Add = $Usage }
ConvertTo-Json -InputObject @([pscustomobject]@{ Usage = $Usage; Added = $true }) -Compress
