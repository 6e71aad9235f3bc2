# Creates a mailbox together with its AD user in the organisation's OU (New-Mailbox), unless a
# mailbox with that primary address exists already: a job repeated after a lost answer creates it once.
# A user mailbox needs a password (sent as a parameter, made a SecureString here); shared, room and
# equipment mailboxes have a disabled account and none.
param(
    [Parameter(Mandatory = $true)][string]$Name,
    [Parameter(Mandatory = $true)][string]$Alias,
    [Parameter(Mandatory = $true)][string]$DisplayName,
    [Parameter(Mandatory = $true)][string]$PrimarySmtpAddress,
    [Parameter(Mandatory = $true)][string]$UserPrincipalName,
    [Parameter(Mandatory = $true)][string]$OrganizationalUnit,
    [ValidateSet('Regular', 'Shared', 'Room', 'Equipment')][string]$Type = 'Regular',
    [string]$Password,
    [string]$Database,
    [string]$AddressBookPolicy
)
$ErrorActionPreference = 'Stop'
if (-not (Get-PSSnapin -Name Microsoft.Exchange.Management.PowerShell.SnapIn -ErrorAction SilentlyContinue)) {
    Add-PSSnapin -Name Microsoft.Exchange.Management.PowerShell.SnapIn
}

$mailbox = Get-Mailbox -Identity $PrimarySmtpAddress -ErrorAction SilentlyContinue
$created = $false
if (-not $mailbox) {
    $arguments = @{
        Name = $Name; Alias = $Alias; DisplayName = $DisplayName; PrimarySmtpAddress = $PrimarySmtpAddress
        UserPrincipalName = $UserPrincipalName; OrganizationalUnit = $OrganizationalUnit
    }
    switch ($Type) {
        'Shared' { $arguments.Shared = $true }
        'Room' { $arguments.Room = $true }
        'Equipment' { $arguments.Equipment = $true }
        default {
            if (-not $Password) { throw "A user mailbox needs a password." }
            $arguments.Password = ConvertTo-SecureString -String $Password -AsPlainText -Force
        }
    }
    if ($Database) { $arguments.Database = $Database }
    if ($AddressBookPolicy) { $arguments.AddressBookPolicy = $AddressBookPolicy }
    $mailbox = New-Mailbox @arguments
    $created = $true
}

$rows = [pscustomobject]@{
    Name                 = $mailbox.Name
    Alias                = $mailbox.Alias
    DisplayName          = $mailbox.DisplayName
    PrimarySmtpAddress   = $mailbox.PrimarySmtpAddress.ToString()
    UserPrincipalName    = $mailbox.UserPrincipalName
    ExchangeGuid         = $mailbox.ExchangeGuid.ToString()
    Database             = "$($mailbox.Database)"
    RecipientTypeDetails = "$($mailbox.RecipientTypeDetails)"
    EmailAddresses       = @($mailbox.EmailAddresses | ForEach-Object { $_.ToString() })
    Created              = $created
}
ConvertTo-Json -InputObject @($rows) -Depth 4 -Compress
