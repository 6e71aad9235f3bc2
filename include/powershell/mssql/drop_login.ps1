# Drops a SQL Server login (a Hostmatic login whose AD user was deleted) on this host's SQL Server
# instance, connected locally with Windows authentication. The name travels as a SqlParameter and
# DROP LOGIN is built inside T-SQL with QUOTENAME. A login already gone is not an error
# (Dropped = false). SQL Server refuses to drop a login that owns a database or is connected: that
# error is the job's answer.
param(
    [Parameter(Mandatory = $true)][string]$Login,
    [string]$Instance = '.'
)
$ErrorActionPreference = 'Stop'

$builder = New-Object System.Data.SqlClient.SqlConnectionStringBuilder
$builder['Data Source'] = $Instance
$builder['Integrated Security'] = $true
$builder['Application Name'] = 'panelflow hostmatic'
$connection = New-Object System.Data.SqlClient.SqlConnection $builder.ConnectionString
$connection.Open()
try {
    $command = $connection.CreateCommand()
    $command.CommandText = @'
SET NOCOUNT ON;
IF LEN(@login) > 128 THROW 50001, N'the login name is longer than 128 characters', 1;
DECLARE @found bit = CASE WHEN EXISTS (SELECT 1 FROM sys.server_principals WHERE name = @login) THEN 1 ELSE 0 END;
IF @found = 1
BEGIN
    DECLARE @sql nvarchar(max) = N'DROP LOGIN ' + QUOTENAME(@login);
    EXEC sys.sp_executesql @sql;
END
SELECT @login AS Login, @found AS Dropped;
'@
    $command.Parameters.Add('@login', [System.Data.SqlDbType]::NVarChar, 256).Value = $Login
    $reader = $command.ExecuteReader()
    $rows = New-Object System.Collections.Generic.List[object]
    while ($reader.Read()) { $rows.Add([pscustomobject]@{ Login = $reader.GetString(0); Dropped = $reader.GetBoolean(1) }) }
    $reader.Close()
} finally {
    $connection.Close()
}
ConvertTo-Json -InputObject @($rows | Select-Object Login, Dropped) -Depth 2 -Compress
