# One tenant's direct routing as Teams has it, in the runspace teams/connect.ps1 connected: every
# online PSTN gateway (SBC) of the tenant, the tenant's PSTN usages and the named voice route
# (null when it does not exist). The panel compares this with what it wants.
param(
    [Parameter(Mandatory = $true)][string]$VoiceRoute
)
$ErrorActionPreference = 'Stop'
$gateways = @(foreach ($g in @(Get-CsOnlinePSTNGateway)) {
        [pscustomobject]@{
            Identity              = [string]$g.Identity
            Fqdn                  = [string]$g.Fqdn
            SipSignalingPort      = $g.SipSignalingPort
            MaxConcurrentSessions = $g.MaxConcurrentSessions
            Enabled               = $g.Enabled
            FailoverTimeSeconds   = $g.FailoverTimeSeconds
            ForwardCallHistory    = $g.ForwardCallHistory
            ForwardPai            = $g.ForwardPai
            SendSipOptions        = $g.SendSipOptions
            MediaBypass           = $g.MediaBypass
        }
    })
$usages = @(foreach ($u in @((Get-CsOnlinePstnUsages -Identity Global).Usage)) { if ($u) { [string]$u } })
$route = $null
foreach ($r in @(Get-CsOnlineVoiceRoute)) {
    if ($r.Identity -eq $VoiceRoute) {
        $route = [pscustomobject]@{
            Identity              = [string]$r.Identity
            NumberPattern         = [string]$r.NumberPattern
            Priority              = $r.Priority
            OnlinePstnGatewayList = @(foreach ($x in @($r.OnlinePstnGatewayList)) { if ($x) { [string]$x } })
            OnlinePstnUsages      = @(foreach ($x in @($r.OnlinePstnUsages)) { if ($x) { [string]$x } })
        }
    }
}
ConvertTo-Json -InputObject @([pscustomobject]@{
        Gateways   = $gateways
        PstnUsages = $usages
        VoiceRoute = $route
    }) -Depth 5 -Compress
