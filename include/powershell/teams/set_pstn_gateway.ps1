# Changes one online PSTN gateway (SBC): only the settings passed (the ones that differ) are set.
param(
    [Parameter(Mandatory = $true)][string]$Identity,
    [int]$SipSignalingPort,
    [int]$MaxConcurrentSessions,
    [bool]$Enabled
)
$ErrorActionPreference = 'Stop'
$changes = @{}
foreach ($name in 'SipSignalingPort', 'MaxConcurrentSessions', 'Enabled') {
    if ($PSBoundParameters.ContainsKey($name)) { $changes[$name] = $PSBoundParameters[$name] }
}
if ($changes.Count -eq 0) { throw "set_pstn_gateway: nothing to change for $Identity" }
Set-CsOnlinePSTNGateway -Identity $Identity @changes
ConvertTo-Json -InputObject @([pscustomobject]@{ Identity = $Identity; Changed = @($changes.Keys | Sort-Object) }) -Compress
