# Binds https://<HostName>:<Port> on an IIS site with the certificate <Thumbprint> of
# Cert:\LocalMachine\<CertificateStore> (SNI), unless that binding with that certificate is there
# already: a retried job changes nothing. A binding with another certificate gets this one.
param(
    [Parameter(Mandatory = $true)][string]$SiteName,
    [Parameter(Mandatory = $true)][string]$HostName,
    [Parameter(Mandatory = $true)][ValidatePattern('^[0-9A-F]{40}$')][string]$Thumbprint,
    [ValidateSet('My', 'WebHosting')][string]$CertificateStore = 'My',
    [string]$IPAddress = '*',
    [ValidateRange(1, 65535)][int]$Port = 443
)
$ErrorActionPreference = 'Stop'
Import-Module WebAdministration

$site = Get-Website | Where-Object { $_.Name -eq $SiteName }
if (-not $site) { throw ("No web site '{0}' on {1}" -f $SiteName, $env:COMPUTERNAME) }
$certificate = Get-ChildItem -LiteralPath ("Cert:\LocalMachine\" + $CertificateStore) |
    Where-Object { $_.Thumbprint -eq $Thumbprint }
if (-not $certificate) { throw ("No certificate {0} in LocalMachine\{1} on {2}" -f $Thumbprint, $CertificateStore, $env:COMPUTERNAME) }

$info = "{0}:{1}:{2}" -f $IPAddress, $Port, $HostName
$binding = Get-WebBinding -Name $site.Name -Protocol https | Where-Object { $_.bindingInformation -eq $info }
$created = $false
if (-not $binding) {
    New-WebBinding -Name $site.Name -Protocol https -IPAddress $IPAddress -Port $Port -HostHeader $HostName -SslFlags 1
    $binding = Get-WebBinding -Name $site.Name -Protocol https | Where-Object { $_.bindingInformation -eq $info }
    $created = $true
}
$changed = $binding.certificateHash -ne $Thumbprint
if ($changed) { $binding.AddSslCertificate($Thumbprint, $CertificateStore) }
$row = [pscustomobject]@{ SiteName = $site.Name; HostName = $HostName; Binding = $info; Thumbprint = $Thumbprint
                          CertificateStore = $CertificateStore; Created = $created; CertificateChanged = $changed } |
    Select-Object SiteName, HostName, Binding, Thumbprint, CertificateStore, Created, CertificateChanged
ConvertTo-Json -InputObject @($row) -Depth 2 -Compress
