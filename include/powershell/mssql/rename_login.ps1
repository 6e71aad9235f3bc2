# Renames a SQL Server login (a Hostmatic login whose AD user was renamed) on this host's SQL Server
# instance, connected locally with Windows authentication (the remoting account must hold ALTER ANY
# LOGIN). The names travel as SqlParameters; the one statement SQL Server cannot parameterise,
# ALTER LOGIN, is built inside T-SQL with QUOTENAME, never from text here.
# Idempotent: old gone and new present is a rename already done (Renamed = false).
param(
    [Parameter(Mandatory = $true)][string]$OldLogin,
    [Parameter(Mandatory = $true)][string]$NewLogin,
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
IF LEN(@old) > 128 OR LEN(@new) > 128 THROW 50001, N'a login name is longer than 128 characters', 1;
DECLARE @has_old bit = CASE WHEN EXISTS (SELECT 1 FROM sys.server_principals WHERE name = @old) THEN 1 ELSE 0 END;
DECLARE @has_new bit = CASE WHEN EXISTS (SELECT 1 FROM sys.server_principals WHERE name = @new) THEN 1 ELSE 0 END;
IF @has_old = 1 AND @has_new = 1 THROW 50002, N'both the old and the new login exist', 1;
IF @has_old = 0 AND @has_new = 0 THROW 50003, N'neither the old nor the new login exists', 1;
IF @has_old = 1
BEGIN
    DECLARE @sql nvarchar(max) = N'ALTER LOGIN ' + QUOTENAME(@old) + N' WITH NAME = ' + QUOTENAME(@new);
    EXEC sys.sp_executesql @sql;
END
SELECT @new AS Login, CAST(@has_old AS bit) AS Renamed;
'@
    $command.Parameters.Add('@old', [System.Data.SqlDbType]::NVarChar, 256).Value = $OldLogin
    $command.Parameters.Add('@new', [System.Data.SqlDbType]::NVarChar, 256).Value = $NewLogin
    $reader = $command.ExecuteReader()
    $rows = New-Object System.Collections.Generic.List[object]
    while ($reader.Read()) { $rows.Add([pscustomobject]@{ Login = $reader.GetString(0); Renamed = $reader.GetBoolean(1) }) }
    $reader.Close()
} finally {
    $connection.Close()
}
ConvertTo-Json -InputObject @($rows | Select-Object Login, Renamed) -Depth 2 -Compress
