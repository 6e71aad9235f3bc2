# Creates an OWA mailbox policy unless one of that name exists (New-OwaMailboxPolicy), then sets the
# settings passed (Set-OwaMailboxPolicy; a setting not passed keeps Exchange's value): a repeated
# run finds the policy and sets the same values again. Reports the policy with those settings.
param(
    [Parameter(Mandatory = $true)][string]$Name,
    [bool]$ActiveSyncIntegrationEnabled,
    [bool]$AllAddressListsEnabled,
    [bool]$CalendarEnabled,
    [bool]$ChangePasswordEnabled,
    [bool]$ContactsEnabled,
    [bool]$DirectFileAccessOnPrivateComputersEnabled,
    [bool]$DirectFileAccessOnPublicComputersEnabled,
    [bool]$GlobalAddressListEnabled,
    [bool]$InstantMessagingEnabled,
    [bool]$JournalEnabled,
    [bool]$JunkEmailEnabled,
    [bool]$NotesEnabled,
    [bool]$OrganizationEnabled,
    [bool]$PremiumClientEnabled,
    [bool]$PublicFoldersEnabled,
    [bool]$RecoverDeletedItemsEnabled,
    [bool]$RemindersAndNotificationsEnabled,
    [bool]$RulesEnabled,
    [bool]$SearchFoldersEnabled,
    [bool]$SignaturesEnabled,
    [bool]$SMimeEnabled,
    [bool]$SpellCheckerEnabled,
    [bool]$TasksEnabled,
    [bool]$TextMessagingEnabled,
    [bool]$ThemeSelectionEnabled,
    [bool]$WacViewingOnPrivateComputersEnabled,
    [bool]$WacViewingOnPublicComputersEnabled,
    [ValidateSet('AllComputers', 'PrivateComputersOnly', 'NoComputers')][string]$AllowOfflineOn,
    [ValidateSet('Allow', 'ForceSave', 'Block')][string]$ActionForUnknownFileAndMIMETypes,
    [string]$DefaultTheme
)
$ErrorActionPreference = 'Stop'
if (-not (Get-PSSnapin -Name Microsoft.Exchange.Management.PowerShell.SnapIn -ErrorAction SilentlyContinue)) {
    Add-PSSnapin -Name Microsoft.Exchange.Management.PowerShell.SnapIn
}

$common = [System.Management.Automation.PSCmdlet]::CommonParameters
$settings = @{}
foreach ($key in $PSBoundParameters.Keys) {
    if ($key -ne 'Name' -and $common -notcontains $key) { $settings[$key] = $PSBoundParameters[$key] }
}
$policy = Get-OwaMailboxPolicy -Identity $Name -ErrorAction SilentlyContinue
$created = $false
if (-not $policy) {
    $policy = New-OwaMailboxPolicy -Name $Name
    $created = $true
}
if ($settings.Count -gt 0) {
    Set-OwaMailboxPolicy -Identity $policy.Identity @settings
}
$policy = Get-OwaMailboxPolicy -Identity $policy.Identity
$row = [ordered]@{
    Name        = $policy.Name
    Guid        = $policy.Guid.ToString()
    IsDefault   = $policy.IsDefault
    WhenChanged = $policy.WhenChangedUTC.ToString('o')
    Created     = $created
}
foreach ($key in ($settings.Keys | Sort-Object)) {
    $value = $policy.$key
    $row[$key] = if ($value -is [enum]) { $value.ToString() } else { $value }
}
$rows = [pscustomobject]$row
ConvertTo-Json -InputObject @($rows) -Depth 4 -Compress
