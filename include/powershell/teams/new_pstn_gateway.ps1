# Creates one online PSTN gateway (SBC) with the panel's settings. MaxConcurrentSessions is sent
# only when the panel manages it.
param(
    [Parameter(Mandatory = $true)][string]$Fqdn,
    [Parameter(Mandatory = $true)][int]$SipSignalingPort,
    [Parameter(Mandatory = $true)][bool]$Enabled,
    [int]$MaxConcurrentSessions
)
$ErrorActionPreference = 'Stop'
$settings = @{ Fqdn = $Fqdn; SipSignalingPort = $SipSignalingPort; Enabled = $Enabled }
if ($PSBoundParameters.ContainsKey('MaxConcurrentSessions')) { $settings.MaxConcurrentSessions = $MaxConcurrentSessions }
$null = New-CsOnlinePSTNGateway @settings
ConvertTo-Json -InputObject @([pscustomobject]@{ Identity = $Fqdn; Created = $true }) -Compress
