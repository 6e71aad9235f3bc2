# Removes an FTP account from this IIS server: its FTP authorization rule, its user-isolation virtual
# directory and its local Windows user. Its files stay in the site's content. An account already
# gone is not an error (Found = false), so a retried job succeeds.
param(
    [Parameter(Mandatory = $true)][string]$FtpSiteName,
    [Parameter(Mandatory = $true)][ValidatePattern('^[A-Za-z0-9_-]{1,20}$')][string]$UserName
)
$ErrorActionPreference = 'Stop'
Import-Module WebAdministration

$found = $false
if (Get-ChildItem IIS:\Sites | Where-Object { $_.Name -eq $FtpSiteName }) {
    $rules = @(Get-WebConfiguration -PSPath 'IIS:\' -Location $FtpSiteName -Filter 'system.ftpServer/security/authorization/add' |
        Where-Object { $_.users -eq $UserName })
    foreach ($rule in $rules) {
        # the name is in the XPath filter, which takes no parameters: ValidatePattern above lets no quote through
        Clear-WebConfiguration -PSPath 'IIS:\' -Location $FtpSiteName `
            -Filter ("system.ftpServer/security/authorization/add[@users='{0}' and @accessType='{1}']" -f $UserName, $rule.accessType)
        $found = $true
    }
    $virtual = Get-WebVirtualDirectory -Site $FtpSiteName | Where-Object { $_.Path -eq ('/LocalUser/' + $UserName) }
    if ($virtual) { Remove-WebVirtualDirectory -Site $FtpSiteName -Application '/' -Name ('LocalUser/' + $UserName); $found = $true }
}
$user = Get-LocalUser | Where-Object { $_.Name -eq $UserName }
if ($user) { Remove-LocalUser -SID $user.SID; $found = $true }
$row = [pscustomobject]@{ UserName = $UserName; FtpSite = $FtpSiteName; Found = $found } | Select-Object UserName, FtpSite, Found
ConvertTo-Json -InputObject @($row) -Depth 2 -Compress
