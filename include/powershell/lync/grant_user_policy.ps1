# Grants a Lync user a per-user voice or conferencing policy (Grant-CsVoicePolicy,
# Grant-CsConferencingPolicy) when the user does not hold it already. Without PolicyName the
# per-user policy is removed, so the site or global policy applies again.
param(
    [Parameter(Mandatory = $true)][string]$Identity,
    [Parameter(Mandatory = $true)][ValidateSet('Voice', 'Conferencing')][string]$PolicyType,
    [string]$PolicyName
)
$ErrorActionPreference = 'Stop'
if (-not (Get-Command -Name Get-CsUser -ErrorAction SilentlyContinue)) {
    if (Get-Module -ListAvailable -Name SkypeForBusiness) { Import-Module SkypeForBusiness } else { Import-Module Lync }
}

$user = Get-CsUser -Identity $Identity
$current = if ($PolicyType -eq 'Voice') { [string]$user.VoicePolicy } else { [string]$user.ConferencingPolicy }
$changed = @()
if ($current -ne [string]$PolicyName) {
    $name = $(if ($PolicyName) { $PolicyName } else { $null })
    if ($PolicyType -eq 'Voice') { Grant-CsVoicePolicy -Identity $Identity -PolicyName $name }
    else { Grant-CsConferencingPolicy -Identity $Identity -PolicyName $name }
    $changed += "${PolicyType}Policy"
}
$rows = Get-CsUser -Identity $Identity | Select-Object `
    @{ n = 'Identity'; e = { [string]$_.Identity } }, @{ n = 'SipAddress'; e = { [string]$_.SipAddress } },
    @{ n = 'DisplayName'; e = { [string]$_.DisplayName } }, @{ n = 'Enabled'; e = { [bool]$_.Enabled } },
    @{ n = 'EnterpriseVoiceEnabled'; e = { [bool]$_.EnterpriseVoiceEnabled } },
    @{ n = 'LineURI'; e = { [string]$_.LineURI } }, @{ n = 'VoicePolicy'; e = { [string]$_.VoicePolicy } },
    @{ n = 'ConferencingPolicy'; e = { [string]$_.ConferencingPolicy } },
    @{ n = 'RegistrarPool'; e = { [string]$_.RegistrarPool } }, @{ n = 'Changed'; e = { $changed } }
ConvertTo-Json -InputObject @($rows) -Depth 3 -Compress
