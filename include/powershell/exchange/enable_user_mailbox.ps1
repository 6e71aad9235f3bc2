# Gives an existing AD user a mailbox (Enable-Mailbox), unless the user has one already: a job
# repeated after a lost answer enables it once.
param(
    [Parameter(Mandatory = $true)][string]$Identity,
    [Parameter(Mandatory = $true)][string]$Alias,
    [Parameter(Mandatory = $true)][string]$PrimarySmtpAddress,
    [string]$DisplayName,
    [ValidateSet('Regular', 'Shared', 'Room', 'Equipment')][string]$Type = 'Regular',
    [string]$Database,
    [string]$AddressBookPolicy
)
$ErrorActionPreference = 'Stop'
if (-not (Get-PSSnapin -Name Microsoft.Exchange.Management.PowerShell.SnapIn -ErrorAction SilentlyContinue)) {
    Add-PSSnapin -Name Microsoft.Exchange.Management.PowerShell.SnapIn
}

$mailbox = Get-Mailbox -Identity $Identity -ErrorAction SilentlyContinue
$created = $false
if (-not $mailbox) {
    $arguments = @{ Identity = $Identity; Alias = $Alias; PrimarySmtpAddress = $PrimarySmtpAddress }
    switch ($Type) {
        'Shared' { $arguments.Shared = $true }
        'Room' { $arguments.Room = $true }
        'Equipment' { $arguments.Equipment = $true }
    }
    if ($DisplayName) { $arguments.DisplayName = $DisplayName }
    if ($Database) { $arguments.Database = $Database }
    if ($AddressBookPolicy) { $arguments.AddressBookPolicy = $AddressBookPolicy }
    $mailbox = Enable-Mailbox @arguments
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
