# Removes Lync / Skype for Business from a user (Disable-CsUser: the SIP address, number and
# policies are deleted from the AD account; the AD account itself stays). A user Lync no longer
# knows was removed already: reported as not found, which a retried job counts as done.
param(
    [Parameter(Mandatory = $true)][string]$Identity
)
$ErrorActionPreference = 'Stop'
if (-not (Get-Command -Name Get-CsUser -ErrorAction SilentlyContinue)) {
    if (Get-Module -ListAvailable -Name SkypeForBusiness) { Import-Module SkypeForBusiness } else { Import-Module Lync }
}

$user = Get-CsUser -Identity $Identity -ErrorAction SilentlyContinue
if ($user) {
    $sip = [string]$user.SipAddress
    Disable-CsUser -Identity $Identity -Confirm:$false
}
$row = [pscustomobject]@{ Found = [bool]$user; Identity = $Identity; SipAddress = $(if ($user) { $sip } else { $null }) }
ConvertTo-Json -InputObject @($row | Select-Object Found, Identity, SipAddress) -Compress
