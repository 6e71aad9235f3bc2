# Every remote domain of the Exchange organisation with the settings the panel manages, under
# their Set-RemoteDomain parameter names.
param()
$ErrorActionPreference = 'Stop'
if (-not (Get-PSSnapin -Name Microsoft.Exchange.Management.PowerShell.SnapIn -ErrorAction SilentlyContinue)) {
    Add-PSSnapin -Name Microsoft.Exchange.Management.PowerShell.SnapIn
}

$rows = @(foreach ($domain in @(Get-RemoteDomain)) {
    [pscustomobject]@{
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
})
ConvertTo-Json -InputObject @($rows) -Depth 4 -Compress
