# Connects this runspace to one tenant's Teams, app-only, with the two access tokens the panel
# obtained through the tenant's own app registration (client credentials): Microsoft Graph and the
# "Skype and Teams Tenant Admin API" (48ac35b8-9aa8-4d74-927d-1f4a14a0b239). The tokens arrive as
# PSRP parameters and are never written to any stream. Answers which tenant Teams says it is, so
# the panel refuses to touch a tenant other than the one it meant.
param(
    [Parameter(Mandatory = $true)][string]$TenantId,
    [Parameter(Mandatory = $true)][string]$GraphToken,
    [Parameter(Mandatory = $true)][string]$TeamsToken
)
$ErrorActionPreference = 'Stop'
# application-based access works from MicrosoftTeams 4.7.1-preview on (5.0.1-preview in GCC High/DoD);
# a release line of 5.0.0 or later is required here
Import-Module MicrosoftTeams -MinimumVersion 5.0.0
# a runspace never carries another tenant's context into this one
try { $null = Disconnect-MicrosoftTeams -ErrorAction SilentlyContinue } catch { }
$null = Connect-MicrosoftTeams -AccessTokens @($GraphToken, $TeamsToken)
$tenant = Get-CsTenant
if ([string]$tenant.TenantId -ne $TenantId) {
    $null = Disconnect-MicrosoftTeams
    throw "the tokens reach tenant $($tenant.TenantId), not $TenantId"
}
ConvertTo-Json -InputObject @([pscustomobject]@{
        TenantId    = [string]$tenant.TenantId
        DisplayName = [string]$tenant.DisplayName
    }) -Depth 3 -Compress
