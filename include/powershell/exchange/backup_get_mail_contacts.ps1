# The restorable definition of every mail contact of one organisation (its OU), for
# SyncMissingDataWork's backup: name, external address and address-book settings (Get-MailContact).
# The caller treats a listing of exactly ResultSize rows as possibly cut short.
param(
    [Parameter(Mandatory = $true)][string]$OrganizationalUnit,
    [int]$ResultSize = 5000
)
$ErrorActionPreference = 'Stop'
if (-not (Get-PSSnapin -Name Microsoft.Exchange.Management.PowerShell.SnapIn -ErrorAction SilentlyContinue)) {
    Add-PSSnapin -Name Microsoft.Exchange.Management.PowerShell.SnapIn
}

$contacts = @(Get-MailContact -OrganizationalUnit $OrganizationalUnit -ResultSize $ResultSize -WarningAction SilentlyContinue)
$rows = @(foreach ($contact in $contacts) {
    [pscustomobject]@{
        Guid                          = $contact.Guid.ToString()
        Name                          = "$($contact.Name)"
        Alias                         = "$($contact.Alias)"
        DisplayName                   = "$($contact.DisplayName)"
        ExternalEmailAddress          = "$($contact.ExternalEmailAddress)"
        PrimarySmtpAddress            = $contact.PrimarySmtpAddress.ToString()
        EmailAddresses                = @($contact.EmailAddresses | ForEach-Object { "$_" })
        HiddenFromAddressListsEnabled = $contact.HiddenFromAddressListsEnabled
    }
})
ConvertTo-Json -InputObject @($rows) -Depth 4 -Compress
