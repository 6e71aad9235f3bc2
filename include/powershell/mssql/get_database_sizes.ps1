# Size in bytes of the named databases on this host's SQL Server instance (data and log files,
# sys.master_files: size is in 8 KB pages), connected locally with Windows authentication. The
# query takes no input; the names are matched here, so none reaches T-SQL. A name the instance
# does not have is left out of the answer.
param(
    [Parameter(Mandatory = $true)][string[]]$Names,
    [string]$Instance = '.'
)
$ErrorActionPreference = 'Stop'

$builder = New-Object System.Data.SqlClient.SqlConnectionStringBuilder
$builder['Data Source'] = $Instance
$builder['Integrated Security'] = $true
$builder['Application Name'] = 'panelflow disk quota'
$connection = New-Object System.Data.SqlClient.SqlConnection $builder.ConnectionString
$connection.Open()
try {
    $command = $connection.CreateCommand()
    $command.CommandText = 'SELECT d.name, SUM(CAST(f.size AS bigint)) * 8192 FROM sys.databases d ' +
                           'JOIN sys.master_files f ON f.database_id = d.database_id GROUP BY d.name'
    $reader = $command.ExecuteReader()
    $sizes = @{}
    while ($reader.Read()) { $sizes[$reader.GetString(0)] = $reader.GetInt64(1) }
    $reader.Close()
} finally {
    $connection.Close()
}
$rows = foreach ($name in $Names) {
    if ($sizes.ContainsKey($name)) { [pscustomobject]@{ Name = $name; SizeBytes = $sizes[$name] } }
}
ConvertTo-Json -InputObject @($rows | Select-Object Name, SizeBytes) -Depth 2 -Compress
