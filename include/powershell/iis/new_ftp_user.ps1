# Creates an FTP account of a site on this IIS server: a local Windows user (New-LocalUser), Modify
# rights on its home folder (inside the site's content), the user-isolation virtual directory
# LocalUser/<UserName> on the FTP site pointing at that folder, and an FTP authorization rule for it.
# Each part is looked up first, so a retried job completes what an interrupted one began and
# changes nothing else; an existing user's password is left as it is. -RefuseExisting (the panel's
# first attempt) refuses a local user that exists already: it is not the panel's to take over.
param(
    [Parameter(Mandatory = $true)][string]$FtpSiteName,
    [Parameter(Mandatory = $true)][ValidatePattern('^[A-Za-z0-9_-]{1,20}$')][string]$UserName,
    [string]$Password,
    [Parameter(Mandatory = $true)][string]$HomePath,
    [switch]$RefuseExisting
)
$ErrorActionPreference = 'Stop'
Import-Module WebAdministration

if (-not (Get-ChildItem IIS:\Sites | Where-Object { $_.Name -eq $FtpSiteName })) {
    throw ("No FTP site '{0}' on {1}" -f $FtpSiteName, $env:COMPUTERNAME)
}
$user = Get-LocalUser | Where-Object { $_.Name -eq $UserName }
$created = $false
if ($user -and $RefuseExisting) { throw ("A local user '{0}' exists on {1} already" -f $UserName, $env:COMPUTERNAME) }
if (-not $user) {
    if (-not $Password) { throw ("The local user '{0}' does not exist and no password was given" -f $UserName) }
    $secure = ConvertTo-SecureString -String $Password -AsPlainText -Force
    $user = New-LocalUser -Name $UserName -Password $secure -PasswordNeverExpires -UserMayNotChangePassword `
        -Description 'FTP account (panelflow)'
    $created = $true
}
if (-not (Test-Path -LiteralPath $HomePath -PathType Container)) { New-Item -ItemType Directory -Path $HomePath -Force | Out-Null }
$acl = Get-Acl -LiteralPath $HomePath
$rule = New-Object System.Security.AccessControl.FileSystemAccessRule($user.SID, 'Modify', 'ContainerInherit,ObjectInherit', 'None', 'Allow')
$acl.SetAccessRule($rule)
Set-Acl -LiteralPath $HomePath -AclObject $acl

$virtual = 'LocalUser/' + $UserName
if (-not (Get-WebVirtualDirectory -Site $FtpSiteName | Where-Object { $_.Path -eq ('/' + $virtual) })) {
    New-WebVirtualDirectory -Site $FtpSiteName -Name $virtual -PhysicalPath $HomePath | Out-Null
}
$rules = @(Get-WebConfiguration -PSPath 'IIS:\' -Location $FtpSiteName -Filter 'system.ftpServer/security/authorization/add' |
    Where-Object { $_.users -eq $UserName -and $_.accessType -eq 'Allow' })
if ($rules.Count -eq 0) {
    Add-WebConfiguration -PSPath 'IIS:\' -Location $FtpSiteName -Filter 'system.ftpServer/security/authorization' `
        -Value @{ accessType = 'Allow'; users = $UserName; permissions = 'Read,Write' }
}
$row = [pscustomobject]@{ UserName = $UserName; FtpSite = $FtpSiteName; HomePath = $HomePath; Created = $created } |
    Select-Object UserName, FtpSite, HomePath, Created
ConvertTo-Json -InputObject @($row) -Depth 2 -Compress
