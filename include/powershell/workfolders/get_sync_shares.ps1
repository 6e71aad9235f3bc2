# The Work Folders sync shares of this file server (Get-SyncShare, SyncShare module of the Work
# Folders role): name, local path, how its user folders are named (%username% or [user]@[domain])
# and whether it is enabled. Not yet run against a real Windows Server: written from the cmdlet's
# documented Msft_SyncShare properties.
param()
$ErrorActionPreference = 'Stop'

$shares = @(Get-SyncShare | Select-Object Name, Path, UserFolderName, @{ Name = 'Enabled'; Expression = { [bool]$_.Enabled } })
ConvertTo-Json -InputObject $shares -Depth 3 -Compress
