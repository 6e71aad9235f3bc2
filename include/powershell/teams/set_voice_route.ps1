# Changes the tenant's voice route: only the settings passed (the ones that differ) are set; the
# gateway list passed replaces the route's list, PstnUsage makes the panel's usage the route's only one.
param(
    [Parameter(Mandatory = $true)][string]$Identity,
    [string]$NumberPattern,
    [int]$Priority,
    [string[]]$OnlinePstnGatewayList,
    [string]$PstnUsage
)
$ErrorActionPreference = 'Stop'
$changes = @{}
foreach ($name in 'NumberPattern', 'Priority', 'OnlinePstnGatewayList') {
    if ($PSBoundParameters.ContainsKey($name)) { $changes[$name] = $PSBoundParameters[$name] }
}
if ($PSBoundParameters.ContainsKey('PstnUsage')) { $changes.OnlinePstnUsages = @($PstnUsage) }
if ($changes.Count -eq 0) { throw "set_voice_route: nothing to change for $Identity" }
Set-CsOnlineVoiceRoute -Identity $Identity @changes
ConvertTo-Json -InputObject @([pscustomobject]@{ Identity = $Identity; Changed = @($changes.Keys | Sort-Object) }) -Compress
