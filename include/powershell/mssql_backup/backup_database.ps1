# Full, compressed, checksummed backup of one SQL Server database into a staging folder of this
# server, for TransferWork to fetch over SFTP and send to the backup servers. The database name and
# the file path reach T-SQL as SqlParameters (BACKUP DATABASE takes @variables for both), never as
# text inside the statement. INIT overwrites a file left by a killed run under the same name.
# Prints one object: Path, Size (bytes) and Sha256 (lower-case hex) of the backup file.
param(
    [Parameter(Mandatory = $true)][ValidateLength(1, 128)][string]$Database,
    [Parameter(Mandatory = $true)][ValidatePattern('^[A-Za-z]:\\.+')][string]$Folder,
    [Parameter(Mandatory = $true)][ValidatePattern('^[A-Za-z0-9_.-]+\.bak$')][string]$FileName,
    [string]$Instance = '.',
    [int]$TimeoutSeconds = 3600
)
$ErrorActionPreference = 'Stop'

if (-not (Test-Path -LiteralPath $Folder -PathType Container)) {
    New-Item -ItemType Directory -Path $Folder | Out-Null
}
$path = Join-Path -Path ([System.IO.Path]::GetFullPath($Folder)) -ChildPath $FileName

$connection = New-Object System.Data.SqlClient.SqlConnection
$connection.ConnectionString = "Data Source=$Instance;Initial Catalog=master;Integrated Security=SSPI;Application Name=panelflow"
$connection.Open()
try {
    $command = $connection.CreateCommand()
    $command.CommandTimeout = $TimeoutSeconds
    $command.CommandText = 'IF DB_ID(@db) IS NULL THROW 50001, N''no such database'', 1; ' +
        'BACKUP DATABASE @db TO DISK = @path WITH INIT, FORMAT, COMPRESSION, CHECKSUM, COPY_ONLY;'
    [void]$command.Parameters.Add('@db', [System.Data.SqlDbType]::NVarChar, 128)
    [void]$command.Parameters.Add('@path', [System.Data.SqlDbType]::NVarChar, 4000)
    $command.Parameters['@db'].Value = $Database
    $command.Parameters['@path'].Value = $path
    [void]$command.ExecuteNonQuery()
} finally {
    $connection.Close()
}

$file = Get-Item -LiteralPath $path
$row = [pscustomobject]@{
    Path   = $file.FullName
    Size   = [int64]$file.Length
    Sha256 = (Get-FileHash -LiteralPath $path -Algorithm SHA256).Hash.ToLowerInvariant()
}
ConvertTo-Json -InputObject @($row) -Depth 2 -Compress
