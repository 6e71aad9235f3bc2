# The restorable definition of every distribution group of one organisation (its OU), for
# SyncMissingDataWork's backup and the recovery of a deleted list: settings (Get-DistributionGroup),
# owners (ManagedBy) and members (Get-DistributionGroupMember, at most MemberLimit each;
# MembersTruncated says when a group has more). The caller treats a listing of exactly ResultSize
# groups as possibly cut short.
param(
    [Parameter(Mandatory = $true)][string]$OrganizationalUnit,
    [int]$ResultSize = 5000,
    [int]$MemberLimit = 5000
)
$ErrorActionPreference = 'Stop'
if (-not (Get-PSSnapin -Name Microsoft.Exchange.Management.PowerShell.SnapIn -ErrorAction SilentlyContinue)) {
    Add-PSSnapin -Name Microsoft.Exchange.Management.PowerShell.SnapIn
}

$groups = @(Get-DistributionGroup -OrganizationalUnit $OrganizationalUnit -ResultSize $ResultSize -WarningAction SilentlyContinue)
$rows = @(foreach ($group in $groups) {
    $members = @(Get-DistributionGroupMember -Identity $group.Identity -ResultSize ($MemberLimit + 1) -WarningAction SilentlyContinue)
    [pscustomobject]@{
        Guid                               = $group.Guid.ToString()
        Name                               = "$($group.Name)"
        Alias                              = "$($group.Alias)"
        DisplayName                        = "$($group.DisplayName)"
        PrimarySmtpAddress                 = $group.PrimarySmtpAddress.ToString()
        EmailAddresses                     = @($group.EmailAddresses | ForEach-Object { "$_" })
        GroupType                          = "$($group.GroupType)"
        ManagedBy                          = @($group.ManagedBy | ForEach-Object { "$_" })
        MemberJoinRestriction              = "$($group.MemberJoinRestriction)"
        MemberDepartRestriction            = "$($group.MemberDepartRestriction)"
        RequireSenderAuthenticationEnabled = $group.RequireSenderAuthenticationEnabled
        HiddenFromAddressListsEnabled      = $group.HiddenFromAddressListsEnabled
        Members                            = @($members | Select-Object -First $MemberLimit | ForEach-Object {
            [pscustomobject]@{
                Name                 = "$($_.Name)"
                PrimarySmtpAddress   = "$($_.PrimarySmtpAddress)"
                RecipientType        = "$($_.RecipientType)"
            }
        })
        MembersTruncated                   = ($members.Count -gt $MemberLimit)
    }
})
ConvertTo-Json -InputObject @($rows) -Depth 5 -Compress
