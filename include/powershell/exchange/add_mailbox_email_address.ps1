# Adds an SMTP address to a mailbox (or makes it the primary one), unless it is there already;
# reports every address the mailbox now has.
param(
    [Parameter(Mandatory = $true)][string]$Identity,
    [Parameter(Mandatory = $true)][string]$Address,
    [bool]$SetAsPrimary = $false
)
$ErrorActionPreference = 'Stop'
if (-not (Get-PSSnapin -Name Microsoft.Exchange.Management.PowerShell.SnapIn -ErrorAction SilentlyContinue)) {
    Add-PSSnapin -Name Microsoft.Exchange.Management.PowerShell.SnapIn
}

$mailbox = Get-Mailbox -Identity $Identity
$changed = $false
if ($SetAsPrimary) {
    if ($mailbox.PrimarySmtpAddress.ToString() -ne $Address) {
        Set-Mailbox -Identity $mailbox.Identity -EmailAddressPolicyEnabled $false -PrimarySmtpAddress $Address
        $changed = $true
    }
} elseif (-not ($mailbox.EmailAddresses | Where-Object { $_.PrefixString -eq 'smtp' -and $_.AddressString -eq $Address })) {
    Set-Mailbox -Identity $mailbox.Identity -EmailAddresses @{ Add = "smtp:$Address" }
    $changed = $true
}
$mailbox = Get-Mailbox -Identity $mailbox.Identity
$rows = [pscustomobject]@{
    ExchangeGuid       = $mailbox.ExchangeGuid.ToString()
    PrimarySmtpAddress = $mailbox.PrimarySmtpAddress.ToString()
    EmailAddresses     = @($mailbox.EmailAddresses | ForEach-Object { $_.ToString() })
    Changed            = $changed
}
ConvertTo-Json -InputObject @($rows) -Depth 4 -Compress
