# Assigns one OWA mailbox policy to a batch of mailboxes (Set-CASMailbox -OwaMailboxPolicy). A
# mailbox that fails is reported with Exchange's message and the rest of the batch goes on; a
# policy that does not exist fails the whole call.
param(
    [Parameter(Mandatory = $true)][string[]]$Identity,
    [Parameter(Mandatory = $true)][string]$OwaMailboxPolicy
)
$ErrorActionPreference = 'Stop'
if (-not (Get-PSSnapin -Name Microsoft.Exchange.Management.PowerShell.SnapIn -ErrorAction SilentlyContinue)) {
    Add-PSSnapin -Name Microsoft.Exchange.Management.PowerShell.SnapIn
}

$policy = Get-OwaMailboxPolicy -Identity $OwaMailboxPolicy
$rows = @(foreach ($id in $Identity) {
    try {
        Set-CASMailbox -Identity $id -OwaMailboxPolicy $policy.Identity
        $cas = Get-CASMailbox -Identity $id
        [pscustomobject]@{ Identity = $id; OwaMailboxPolicy = "$($cas.OwaMailboxPolicy)"; Error = $null }
    } catch {
        [pscustomobject]@{ Identity = $id; OwaMailboxPolicy = $null; Error = $_.Exception.Message }
    }
})
ConvertTo-Json -InputObject @($rows) -Depth 4 -Compress
