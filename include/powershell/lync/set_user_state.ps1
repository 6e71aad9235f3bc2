# Sets a Lync user's account state without touching its SIP address, number or policies:
# Enabled $false stops sign-in (a suspended or ended contract), Enabled $true allows it again.
# A user Lync no longer knows is reported as not found (nothing to suspend), not as an error.
param(
    [Parameter(Mandatory = $true)][string]$Identity,
    [Parameter(Mandatory = $true)][bool]$Enabled
)
$ErrorActionPreference = 'Stop'
if (-not (Get-Command -Name Get-CsUser -ErrorAction SilentlyContinue)) {
    if (Get-Module -ListAvailable -Name SkypeForBusiness) { Import-Module SkypeForBusiness } else { Import-Module Lync }
}

$user = Get-CsUser -Identity $Identity -ErrorAction SilentlyContinue
if (-not $user) {
    ConvertTo-Json -InputObject @([pscustomobject]@{ Found = $false; Identity = $Identity }) -Compress
    return
}
$changed = @()
if ([bool]$user.Enabled -ne $Enabled) {
    Set-CsUser -Identity $Identity -Enabled $Enabled
    $changed += 'Enabled'
}
$rows = Get-CsUser -Identity $Identity | Select-Object @{ n = 'Found'; e = { $true } },
    @{ n = 'Identity'; e = { [string]$_.Identity } }, @{ n = 'SipAddress'; e = { [string]$_.SipAddress } },
    @{ n = 'DisplayName'; e = { [string]$_.DisplayName } }, @{ n = 'Enabled'; e = { [bool]$_.Enabled } },
    @{ n = 'EnterpriseVoiceEnabled'; e = { [bool]$_.EnterpriseVoiceEnabled } },
    @{ n = 'LineURI'; e = { [string]$_.LineURI } }, @{ n = 'VoicePolicy'; e = { [string]$_.VoicePolicy } },
    @{ n = 'ConferencingPolicy'; e = { [string]$_.ConferencingPolicy } },
    @{ n = 'RegistrarPool'; e = { [string]$_.RegistrarPool } }, @{ n = 'Changed'; e = { $changed } }
ConvertTo-Json -InputObject @($rows) -Depth 3 -Compress
