# The Lync users homed on one registrar pool, with what decides their SPLA edition: whether the
# account is enabled, Enterprise Voice, and the per-user conferencing policy (empty: the global one).
param(
    [Parameter(Mandatory = $true)][string]$RegistrarPool
)
$ErrorActionPreference = 'Stop'
if (-not (Get-Command -Name Get-CsUser -ErrorAction SilentlyContinue)) {
    if (Get-Module -ListAvailable -Name SkypeForBusiness) { Import-Module SkypeForBusiness } else { Import-Module Lync }
}

# compared as text in Where-Object, so the pool name is never parsed as part of a -Filter expression
$rows = Get-CsUser -ResultSize Unlimited | Where-Object { [string]$_.RegistrarPool -eq $RegistrarPool } |
    Select-Object @{ n = 'SipAddress'; e = { [string]$_.SipAddress } }, @{ n = 'Enabled'; e = { [bool]$_.Enabled } },
        @{ n = 'EnterpriseVoiceEnabled'; e = { [bool]$_.EnterpriseVoiceEnabled } },
        @{ n = 'ConferencingPolicy'; e = { [string]$_.ConferencingPolicy } },
        @{ n = 'VoicePolicy'; e = { [string]$_.VoicePolicy } }
ConvertTo-Json -InputObject @($rows) -Depth 3 -Compress
