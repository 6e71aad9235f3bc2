# One organisation's spam filtering on a shared (multi-tenant) Exchange, where the content filter
# (Set-ContentFilterConfig) is one for the whole forest: the organisation's allowed and blocked
# senders and sender domains become four transport rules scoped to its accepted domains
# (RecipientDomainIs) — allowed mail gets SCL -1 (skips the spam filter), blocked mail is deleted —
# and its SCL thresholds are set on the mailboxes passed (Set-Mailbox -SCL*; -1: that action off).
# A rule whose list is empty is removed. Rules are found by name, so a repeated run sets the same
# rules again. Removing is confirmed by this script's own ShouldProcess: the caller passes Confirm=$false.
[CmdletBinding(SupportsShouldProcess = $true, ConfirmImpact = 'High')]
param(
    [Parameter(Mandatory = $true)][string]$RuleNamePrefix,
    [Parameter(Mandatory = $true)][string[]]$RecipientDomains,
    [string[]]$AllowedSenders = @(),
    [string[]]$BlockedSenders = @(),
    [string[]]$AllowedDomains = @(),
    [string[]]$BlockedDomains = @(),
    [string[]]$Mailboxes = @(),
    [ValidateRange(-1, 9)][int]$SCLDeleteThreshold = -1,
    [ValidateRange(-1, 9)][int]$SCLRejectThreshold = -1,
    [ValidateRange(-1, 9)][int]$SCLQuarantineThreshold = -1,
    [ValidateRange(-1, 9)][int]$SCLJunkThreshold = -1
)
$ErrorActionPreference = 'Stop'
if (-not (Get-PSSnapin -Name Microsoft.Exchange.Management.PowerShell.SnapIn -ErrorAction SilentlyContinue)) {
    Add-PSSnapin -Name Microsoft.Exchange.Management.PowerShell.SnapIn
}

$rules = @(
    @{ Name = "$RuleNamePrefix - allowed senders"; Condition = 'From'; Values = $AllowedSenders; Action = @{ SetSCL = -1 } },
    @{ Name = "$RuleNamePrefix - allowed domains"; Condition = 'SenderDomainIs'; Values = $AllowedDomains; Action = @{ SetSCL = -1 } },
    @{ Name = "$RuleNamePrefix - blocked senders"; Condition = 'From'; Values = $BlockedSenders; Action = @{ DeleteMessage = $true } },
    @{ Name = "$RuleNamePrefix - blocked domains"; Condition = 'SenderDomainIs'; Values = $BlockedDomains; Action = @{ DeleteMessage = $true } }
)
$removed = @()
foreach ($rule in $rules) {
    $existing = Get-TransportRule -Identity $rule.Name -ErrorAction SilentlyContinue
    if (@($rule.Values).Count -eq 0) {
        if ($existing -and $PSCmdlet.ShouldProcess($rule.Name, 'Remove-TransportRule')) {
            Remove-TransportRule -Identity $existing.Identity -Confirm:$false
            $removed += $rule.Name
        }
        continue
    }
    $arguments = @{ RecipientDomainIs = $RecipientDomains }
    $arguments[$rule.Condition] = $rule.Values
    foreach ($key in $rule.Action.Keys) { $arguments[$key] = $rule.Action[$key] }
    if ($existing) {
        Set-TransportRule -Identity $existing.Identity @arguments
    } else {
        New-TransportRule -Name $rule.Name -Mode Enforce @arguments | Out-Null
    }
}

$thresholds = @{}
foreach ($pair in @(@('Delete', $SCLDeleteThreshold), @('Reject', $SCLRejectThreshold),
                    @('Quarantine', $SCLQuarantineThreshold), @('Junk', $SCLJunkThreshold))) {
    $thresholds["SCL$($pair[0])Enabled"] = $pair[1] -ge 0
    if ($pair[1] -ge 0) { $thresholds["SCL$($pair[0])Threshold"] = $pair[1] }
}
$updated = 0
foreach ($mailbox in $Mailboxes) {
    Set-Mailbox -Identity $mailbox @thresholds
    $updated++
}

$prefix = [System.Management.Automation.WildcardPattern]::Escape("$RuleNamePrefix - ")
$rows = [pscustomobject]@{
    Rules = @(Get-TransportRule | Where-Object { $_.Name -like "$prefix*" } | ForEach-Object {
        [pscustomobject]@{
            Name              = $_.Name
            State             = "$($_.State)"
            Mode              = "$($_.Mode)"
            Priority          = $_.Priority
            From              = @($_.From | ForEach-Object { "$_" })
            SenderDomainIs    = @($_.SenderDomainIs | ForEach-Object { "$_" })
            RecipientDomainIs = @($_.RecipientDomainIs | ForEach-Object { "$_" })
            SetSCL            = $_.SetSCL
            DeleteMessage     = $_.DeleteMessage
        }
    })
    RemovedRules     = $removed
    MailboxesUpdated = $updated
}
# -Depth 5: rows → row → Rules → rule → its From / domain lists are five levels
ConvertTo-Json -InputObject @($rows) -Depth 5 -Compress
