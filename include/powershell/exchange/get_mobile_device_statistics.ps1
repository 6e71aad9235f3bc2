# The mobile devices (ActiveSync, Outlook for iOS/Android) of the mailboxes homed on databases
# whose active copy this server hosts, so that each mailbox's devices are reported by one server.
# A device's owner is the user object its partnership sits under
# (CN=<device>,CN=ExchangeActiveSyncDevices,<user DN>). A device whose statistics cannot be read
# (its partnership being removed meanwhile) is still listed, with StatisticsError.
param(
    [Parameter(Mandatory = $true)][string]$Server
)
$ErrorActionPreference = 'Stop'
if (-not (Get-PSSnapin -Name Microsoft.Exchange.Management.PowerShell.SnapIn -ErrorAction SilentlyContinue)) {
    Add-PSSnapin -Name Microsoft.Exchange.Management.PowerShell.SnapIn
}

function ConvertTo-UtcText($Value) {
    if ($null -eq $Value) { return $null }
    return ([datetime]$Value).ToUniversalTime().ToString('o')
}

$mailboxes = @{}
foreach ($database in @(Get-MailboxDatabase -Server $Server | Where-Object { $_.Server.Name -eq $Server })) {
    foreach ($mailbox in Get-Mailbox -Database $database.Identity -ResultSize Unlimited -WarningAction SilentlyContinue) {
        $mailboxes[$mailbox.DistinguishedName] = $mailbox
    }
}

$rows = @(foreach ($device in Get-MobileDevice -ResultSize Unlimited -WarningAction SilentlyContinue) {
    $ownerDn = ($device.DistinguishedName -split ',CN=ExchangeActiveSyncDevices,', 2)[1]
    if ($null -eq $ownerDn -or -not $mailboxes.ContainsKey($ownerDn)) { continue }
    $mailbox = $mailboxes[$ownerDn]
    $stats, $statsError = $null, $null
    try {
        $stats = Get-MobileDeviceStatistics -Identity $device.Identity -WarningAction SilentlyContinue
    } catch {
        $statsError = $_.Exception.Message
    }
    [pscustomobject]@{
        Guid               = [string]$device.Guid
        DeviceId           = $device.DeviceId
        DeviceType         = $device.DeviceType
        DeviceModel        = $device.DeviceModel
        DeviceOS           = $device.DeviceOS
        DeviceUserAgent    = $device.DeviceUserAgent
        FriendlyName       = $device.FriendlyName
        FirstSyncTime      = ConvertTo-UtcText $device.FirstSyncTime
        LastSuccessSync    = if ($stats) { ConvertTo-UtcText $stats.LastSuccessSync } else { $null }
        Status             = if ($stats) { [string]$stats.Status } else { $null }
        DeviceAccessState  = [string]$device.DeviceAccessState
        MailboxGuid        = [string]$mailbox.ExchangeGuid
        PrimarySmtpAddress = [string]$mailbox.PrimarySmtpAddress
        DisplayName        = $mailbox.DisplayName
        OrganizationalUnit = [string]$mailbox.OrganizationalUnit
        StatisticsError    = $statsError
    }
})
ConvertTo-Json -InputObject @($rows) -Depth 4 -Compress
