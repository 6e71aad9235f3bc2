# Outbound PSTN calls from the Monitoring server's CDR database (LcsCDR) that ended in
# [EndedFrom, EndedTo), oldest first, at most MaxRows, after the keyset (AfterEnd, AfterIdTime,
# AfterIdSeq) of the previous page. Times are UTC text 'yyyy-MM-ddTHH:mm:ss.fff', as LcsCDR keeps them.
# Every value reaches SQL Server as a typed SqlParameter; the connection string is built by
# SqlConnectionStringBuilder. Run on a Front End whose session may reach the SQL instance
# (CredSSP or Kerberos delegation for integrated security).
param(
    [Parameter(Mandatory = $true)][string]$SqlInstance,
    [Parameter(Mandatory = $true)][string]$Database,
    [Parameter(Mandatory = $true)][string]$EndedFrom,
    [Parameter(Mandatory = $true)][string]$EndedTo,
    [string]$AfterEnd,
    [string]$AfterIdTime,
    [int]$AfterIdSeq = 0,
    [ValidateRange(1, 100000)][int]$MaxRows = 5000
)
$ErrorActionPreference = 'Stop'
$format = 'yyyy-MM-ddTHH:mm:ss.fff'
$culture = [Globalization.CultureInfo]::InvariantCulture
function ConvertFrom-CdrTime([string]$text) {
    if (-not $text) { return [DBNull]::Value }
    return [DateTime]::ParseExact($text, $format, $culture)
}

$query = @'
SELECT TOP (@MaxRows)
       s.SessionIdTime, s.SessionIdSeq, caller.UserUri AS CallerUri, callee.PhoneUri AS CalleeNumber,
       s.InviteTime, s.ResponseTime, s.SessionEndTime, s.ResponseCode
FROM dbo.VoIPDetails AS v
JOIN dbo.SessionDetails AS s ON s.SessionIdTime = v.SessionIdTime AND s.SessionIdSeq = v.SessionIdSeq
JOIN dbo.Users AS caller ON caller.UserId = s.User1Id
LEFT JOIN dbo.Phones AS callee ON callee.PhoneId = v.ConnectedNumberId
WHERE v.FromGatewayId IS NULL AND v.ToGatewayId IS NOT NULL
  AND s.SessionEndTime >= @EndedFrom AND s.SessionEndTime < @EndedTo
  AND (@AfterEnd IS NULL OR s.SessionEndTime > @AfterEnd
       OR (s.SessionEndTime = @AfterEnd AND (s.SessionIdTime > @AfterIdTime
           OR (s.SessionIdTime = @AfterIdTime AND s.SessionIdSeq > @AfterIdSeq))))
ORDER BY s.SessionEndTime, s.SessionIdTime, s.SessionIdSeq
'@

$builder = New-Object System.Data.SqlClient.SqlConnectionStringBuilder
$builder['Data Source'] = $SqlInstance
$builder['Initial Catalog'] = $Database
$builder['Integrated Security'] = $true
$builder['Application Name'] = 'panelflow CallDataProcessWork'
$connection = New-Object System.Data.SqlClient.SqlConnection $builder.ConnectionString
$command = $connection.CreateCommand()
$command.CommandText = $query
$command.CommandTimeout = 120
[void]$command.Parameters.Add('@MaxRows', [Data.SqlDbType]::Int)
$command.Parameters['@MaxRows'].Value = $MaxRows
foreach ($name in 'EndedFrom', 'EndedTo', 'AfterEnd', 'AfterIdTime') {
    [void]$command.Parameters.Add("@$name", [Data.SqlDbType]::DateTime)
    $command.Parameters["@$name"].Value = ConvertFrom-CdrTime (Get-Variable -Name $name -ValueOnly)
}
[void]$command.Parameters.Add('@AfterIdSeq', [Data.SqlDbType]::Int)
$command.Parameters['@AfterIdSeq'].Value = $AfterIdSeq

$table = New-Object System.Data.DataTable
$connection.Open()
try {
    $reader = $command.ExecuteReader()
    $table.Load($reader)
} finally {
    $connection.Close()
}
$rows = $table.Rows | Select-Object `
    @{ n = 'SessionIdTime'; e = { $_.SessionIdTime.ToString($format, $culture) } },
    @{ n = 'SessionIdSeq'; e = { [int]$_.SessionIdSeq } },
    @{ n = 'CallerUri'; e = { [string]$_.CallerUri } }, @{ n = 'CalleeNumber'; e = { [string]$_.CalleeNumber } },
    @{ n = 'InviteTime'; e = { $_.InviteTime.ToString($format, $culture) } },
    @{ n = 'ResponseTime'; e = { if ($_.ResponseTime -is [DBNull]) { $null } else { $_.ResponseTime.ToString($format, $culture) } } },
    @{ n = 'SessionEndTime'; e = { $_.SessionEndTime.ToString($format, $culture) } },
    @{ n = 'ResponseCode'; e = { if ($_.ResponseCode -is [DBNull]) { $null } else { [int]$_.ResponseCode } } }
ConvertTo-Json -InputObject @($rows) -Depth 3 -Compress
