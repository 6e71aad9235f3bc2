# Sets an existing remote domain's settings to the panel's values (Set-RemoteDomain; a setting not
# passed keeps Exchange's value). Reports it as Exchange holds it.
param(
    [Parameter(Mandatory = $true)][string]$Identity,
    [ValidateSet('External', 'ExternalLegacy', 'InternalLegacy', 'None')][string]$AllowedOOFType,
    [bool]$AutoReplyEnabled,
    [bool]$AutoForwardEnabled,
    [bool]$DeliveryReportEnabled,
    [bool]$NDREnabled,
    [bool]$MeetingForwardNotificationEnabled,
    [bool]$TNEFEnabled,
    [ValidateSet('MimeHtmlText', 'MimeText', 'MimeHtml')][string]$ContentType,
    [string]$CharacterSet,
    [bool]$DisplaySenderName,
    [bool]$TrustedMailOutboundEnabled,
    [bool]$TrustedMailInboundEnabled
)
$ErrorActionPreference = 'Stop'
if (-not (Get-PSSnapin -Name Microsoft.Exchange.Management.PowerShell.SnapIn -ErrorAction SilentlyContinue)) {
    Add-PSSnapin -Name Microsoft.Exchange.Management.PowerShell.SnapIn
}

$domain = Get-RemoteDomain -Identity $Identity
$common = [System.Management.Automation.PSCmdlet]::CommonParameters
$settings = @{}
foreach ($key in $PSBoundParameters.Keys) {
    if ($key -ne 'Identity' -and $common -notcontains $key) { $settings[$key] = $PSBoundParameters[$key] }
}
if ($settings.Count -gt 0) {
    Set-RemoteDomain -Identity $domain.Identity @settings
}
$domain = Get-RemoteDomain -Identity $domain.Identity
$rows = [pscustomobject]@{
    Name                              = $domain.Name
    DomainName                        = "$($domain.DomainName)"
    Guid                              = $domain.Guid.ToString()
    IsInternal                        = $domain.IsInternal
    AllowedOOFType                    = "$($domain.AllowedOOFType)"
    AutoReplyEnabled                  = $domain.AutoReplyEnabled
    AutoForwardEnabled                = $domain.AutoForwardEnabled
    DeliveryReportEnabled             = $domain.DeliveryReportEnabled
    NDREnabled                        = $domain.NDREnabled
    MeetingForwardNotificationEnabled = $domain.MeetingForwardNotificationEnabled
    TNEFEnabled                       = $domain.TNEFEnabled
    ContentType                       = "$($domain.ContentType)"
    CharacterSet                      = $domain.CharacterSet
    DisplaySenderName                 = $domain.DisplaySenderName
    TrustedMailOutboundEnabled        = $domain.TrustedMailOutboundEnabled
    TrustedMailInboundEnabled         = $domain.TrustedMailInboundEnabled
}
ConvertTo-Json -InputObject @($rows) -Depth 4 -Compress
