# Sets a mailbox's storage quotas (values such as "2048MB" or "Unlimited"), or returns it to its
# database's defaults, and reports the quotas Exchange now holds.
param(
    [Parameter(Mandatory = $true)][string]$Identity,
    [bool]$UseDatabaseQuotaDefaults = $false,
    [string]$IssueWarningQuota = 'Unlimited',
    [string]$ProhibitSendQuota = 'Unlimited',
    [string]$ProhibitSendReceiveQuota = 'Unlimited'
)
$ErrorActionPreference = 'Stop'
if (-not (Get-PSSnapin -Name Microsoft.Exchange.Management.PowerShell.SnapIn -ErrorAction SilentlyContinue)) {
    Add-PSSnapin -Name Microsoft.Exchange.Management.PowerShell.SnapIn
}

if ($UseDatabaseQuotaDefaults) {
    Set-Mailbox -Identity $Identity -UseDatabaseQuotaDefaults $true
} else {
    Set-Mailbox -Identity $Identity -UseDatabaseQuotaDefaults $false -IssueWarningQuota $IssueWarningQuota `
        -ProhibitSendQuota $ProhibitSendQuota -ProhibitSendReceiveQuota $ProhibitSendReceiveQuota
}
$mailbox = Get-Mailbox -Identity $Identity
$rows = [pscustomobject]@{
    ExchangeGuid             = $mailbox.ExchangeGuid.ToString()
    PrimarySmtpAddress       = $mailbox.PrimarySmtpAddress.ToString()
    UseDatabaseQuotaDefaults = $mailbox.UseDatabaseQuotaDefaults
    IssueWarningQuota        = "$($mailbox.IssueWarningQuota)"
    ProhibitSendQuota        = "$($mailbox.ProhibitSendQuota)"
    ProhibitSendReceiveQuota = "$($mailbox.ProhibitSendReceiveQuota)"
}
ConvertTo-Json -InputObject @($rows) -Depth 4 -Compress
