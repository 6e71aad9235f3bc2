# Where each mailbox of one hosted organisation lives now: its database (name and Guid) and the
# server holding that database's active copy. Get-Mailbox only: no statistics, so it is cheap
# enough for ProvisioningWork's ten-minute loop.
param(
    [Parameter(Mandatory = $true)][string]$OrganizationalUnit
)
$ErrorActionPreference = 'Stop'
if (-not (Get-PSSnapin -Name Microsoft.Exchange.Management.PowerShell.SnapIn -ErrorAction SilentlyContinue)) {
    Add-PSSnapin -Name Microsoft.Exchange.Management.PowerShell.SnapIn
}

$rows = @(Get-Mailbox -OrganizationalUnit $OrganizationalUnit -ResultSize Unlimited -WarningAction SilentlyContinue |
    Select-Object @{ n = 'ExchangeGuid'; e = { [string]$_.ExchangeGuid } },
                  @{ n = 'PrimarySmtpAddress'; e = { [string]$_.PrimarySmtpAddress } },
                  @{ n = 'Database'; e = { [string]$_.Database.Name } },
                  @{ n = 'DatabaseGuid'; e = { [string]$_.Database.ObjectGuid } },
                  @{ n = 'ServerName'; e = { [string]$_.ServerName } })
ConvertTo-Json -InputObject @($rows) -Depth 4 -Compress
