# Enables an Active Directory user for Lync / Skype for Business on a registrar pool, or leaves an
# enabled one alone, then sets what the job asks for (each only when it differs): Enterprise Voice
# with a line URI, a per-user voice policy, a per-user conferencing policy. A parameter left out is
# left as it is; an empty policy name returns the user to the global/site policy.
param(
    [Parameter(Mandatory = $true)][string]$Identity,
    [Parameter(Mandatory = $true)][string]$SipAddress,
    [Parameter(Mandatory = $true)][string]$RegistrarPool,
    [string]$LineUri,
    [string]$VoicePolicy,
    [string]$ConferencingPolicy
)
$ErrorActionPreference = 'Stop'
if (-not (Get-Command -Name Get-CsUser -ErrorAction SilentlyContinue)) {
    if (Get-Module -ListAvailable -Name SkypeForBusiness) { Import-Module SkypeForBusiness } else { Import-Module Lync }
}

$changed = @()
$user = Get-CsUser -Identity $Identity -ErrorAction SilentlyContinue
if (-not $user) {
    Enable-CsUser -Identity $Identity -RegistrarPool $RegistrarPool -SipAddress $SipAddress
    $changed += 'Enabled'
    # Enable-CsUser writes to a domain controller; wait (bounded) until the user can be read back
    for ($i = 0; $i -lt 30 -and -not $user; $i++) {
        Start-Sleep -Seconds 1
        $user = Get-CsUser -Identity $Identity -ErrorAction SilentlyContinue
    }
    if (-not $user) { throw ("'{0}' was enabled for Lync but cannot be read back yet" -f $Identity) }
} elseif ([string]$user.SipAddress -ne $SipAddress) {
    throw ("'{0}' is already enabled for Lync as {1}, not {2}" -f $Identity, $user.SipAddress, $SipAddress)
} elseif ([string]$user.RegistrarPool -ne $RegistrarPool) {
    throw ("'{0}' is homed on {1}, not {2} (Move-CsUser is an operator's decision)" -f $Identity, $user.RegistrarPool, $RegistrarPool)
} elseif (-not $user.Enabled) {
    Set-CsUser -Identity $Identity -Enabled $true
    $changed += 'Enabled'
}

if ($LineUri -and ([string]$user.LineURI -ne $LineUri -or -not $user.EnterpriseVoiceEnabled)) {
    Set-CsUser -Identity $Identity -EnterpriseVoiceEnabled $true -LineURI $LineUri
    $changed += 'LineURI'
}
if ($PSBoundParameters.ContainsKey('VoicePolicy') -and [string]$user.VoicePolicy -ne $VoicePolicy) {
    Grant-CsVoicePolicy -Identity $Identity -PolicyName $(if ($VoicePolicy) { $VoicePolicy } else { $null })
    $changed += 'VoicePolicy'
}
if ($PSBoundParameters.ContainsKey('ConferencingPolicy') -and [string]$user.ConferencingPolicy -ne $ConferencingPolicy) {
    Grant-CsConferencingPolicy -Identity $Identity -PolicyName $(if ($ConferencingPolicy) { $ConferencingPolicy } else { $null })
    $changed += 'ConferencingPolicy'
}

$rows = Get-CsUser -Identity $Identity | Select-Object `
    @{ n = 'Identity'; e = { [string]$_.Identity } }, @{ n = 'SipAddress'; e = { [string]$_.SipAddress } },
    @{ n = 'DisplayName'; e = { [string]$_.DisplayName } }, @{ n = 'Enabled'; e = { [bool]$_.Enabled } },
    @{ n = 'EnterpriseVoiceEnabled'; e = { [bool]$_.EnterpriseVoiceEnabled } },
    @{ n = 'LineURI'; e = { [string]$_.LineURI } }, @{ n = 'VoicePolicy'; e = { [string]$_.VoicePolicy } },
    @{ n = 'ConferencingPolicy'; e = { [string]$_.ConferencingPolicy } },
    @{ n = 'RegistrarPool'; e = { [string]$_.RegistrarPool } }, @{ n = 'Changed'; e = { $changed } }
ConvertTo-Json -InputObject @($rows) -Depth 3 -Compress
