# Creates the tenant's voice route to the panel's SBCs, for the panel's one PSTN usage.
param(
    [Parameter(Mandatory = $true)][string]$Identity,
    [Parameter(Mandatory = $true)][string]$NumberPattern,
    [Parameter(Mandatory = $true)][int]$Priority,
    [Parameter(Mandatory = $true)][string[]]$OnlinePstnGatewayList,
    [Parameter(Mandatory = $true)][string]$PstnUsage
)
$ErrorActionPreference = 'Stop'
$null = New-CsOnlineVoiceRoute -Identity $Identity -NumberPattern $NumberPattern -Priority $Priority `
    -OnlinePstnGatewayList $OnlinePstnGatewayList -OnlinePstnUsages @($PstnUsage)
ConvertTo-Json -InputObject @([pscustomobject]@{ Identity = $Identity; Created = $true }) -Compress
