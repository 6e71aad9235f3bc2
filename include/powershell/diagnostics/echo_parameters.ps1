# Echoes its parameters back as JSON: a connectivity and parameter-passing check for a psrp
# connection (the values must come back exactly as sent, whatever quotes or semicolons they hold).
param(
    [Parameter(Mandatory = $true)][string]$Identity,
    [int]$Limit = 10
)
$ErrorActionPreference = 'Stop'
ConvertTo-Json -InputObject @([pscustomobject]@{ Identity = $Identity; Limit = $Limit }) -Depth 3 -Compress
