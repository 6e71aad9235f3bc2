# Gives a Lync user a phone number: Enterprise Voice on with that line URI (tel:+E.164[;ext=N]),
# or, without LineUri, takes the number away and turns Enterprise Voice off. Only what differs is set.
param(
    [Parameter(Mandatory = $true)][string]$Identity,
    [string]$LineUri
)
$ErrorActionPreference = 'Stop'
if (-not (Get-Command -Name Get-CsUser -ErrorAction SilentlyContinue)) {
    if (Get-Module -ListAvailable -Name SkypeForBusiness) { Import-Module SkypeForBusiness } else { Import-Module Lync }
}

$user = Get-CsUser -Identity $Identity
$changed = @()
if ($LineUri) {
    if ([string]$user.LineURI -ne $LineUri -or -not $user.EnterpriseVoiceEnabled) {
        Set-CsUser -Identity $Identity -EnterpriseVoiceEnabled $true -LineURI $LineUri
        $changed += 'LineURI'
    }
} elseif ($user.LineURI -or $user.EnterpriseVoiceEnabled) {
    Set-CsUser -Identity $Identity -EnterpriseVoiceEnabled $false -LineURI $null
    $changed += 'LineURI'
}
$rows = Get-CsUser -Identity $Identity | Select-Object `
    @{ n = 'Identity'; e = { [string]$_.Identity } }, @{ n = 'SipAddress'; e = { [string]$_.SipAddress } },
    @{ n = 'DisplayName'; e = { [string]$_.DisplayName } }, @{ n = 'Enabled'; e = { [bool]$_.Enabled } },
    @{ n = 'EnterpriseVoiceEnabled'; e = { [bool]$_.EnterpriseVoiceEnabled } },
    @{ n = 'LineURI'; e = { [string]$_.LineURI } }, @{ n = 'VoicePolicy'; e = { [string]$_.VoicePolicy } },
    @{ n = 'ConferencingPolicy'; e = { [string]$_.ConferencingPolicy } },
    @{ n = 'RegistrarPool'; e = { [string]$_.RegistrarPool } }, @{ n = 'Changed'; e = { $changed } }
ConvertTo-Json -InputObject @($rows) -Depth 3 -Compress
