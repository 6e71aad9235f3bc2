# Deletes archived virtual disk files, each only if it is a .vhd/.vhdx/.avhd/.avhdx file inside
# ArchiveRoot (after resolving . and ..; a drive root is refused). One result per path: Deleted,
# Missing (already gone) or Error (refused, or the host's message); one failure stops no other.
param(
    [Parameter(Mandatory = $true)][ValidatePattern('^[A-Za-z]:\\.+')][string]$ArchiveRoot,
    [Parameter(Mandatory = $true)][string[]]$Paths
)
$ErrorActionPreference = 'Stop'

$root = [System.IO.Path]::GetFullPath($ArchiveRoot).TrimEnd('\') + '\'
if ($root.Length -le 3) { throw "refusing to delete from the drive root $ArchiveRoot" }
$extensions = @('.vhd', '.vhdx', '.avhd', '.avhdx')
$rows = foreach ($path in $Paths) {
    $full = [System.IO.Path]::GetFullPath($path)
    if (-not $full.StartsWith($root, [System.StringComparison]::OrdinalIgnoreCase) -or
        $extensions -notcontains [System.IO.Path]::GetExtension($full).ToLowerInvariant()) {
        [pscustomobject]@{ Path = $path; Deleted = $false; Missing = $false; Error = "refused: not a virtual disk file inside $root" }
        continue
    }
    if (-not [System.IO.File]::Exists($full)) {
        [pscustomobject]@{ Path = $path; Deleted = $false; Missing = $true; Error = $null }
        continue
    }
    try {
        [System.IO.File]::Delete($full)
        [pscustomobject]@{ Path = $path; Deleted = $true; Missing = $false; Error = $null }
    } catch {
        [pscustomobject]@{ Path = $path; Deleted = $false; Missing = $false; Error = $_.Exception.Message }
    }
}
ConvertTo-Json -InputObject @($rows) -Depth 4 -Compress
