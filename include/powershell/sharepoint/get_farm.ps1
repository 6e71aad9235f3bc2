# The farm's build and the SKUs installed on it: (Get-SPFarm).BuildVersion and .Products (GUIDs of
# the products, e.g. SharePoint Server Enterprise). ProvisioningWork 37 turns them into the edition.
param()
$ErrorActionPreference = 'Stop'
if ($null -eq (Get-PSSnapin -Name Microsoft.SharePoint.PowerShell -ErrorAction SilentlyContinue)) {
    Add-PSSnapin Microsoft.SharePoint.PowerShell
}

$farm = Get-SPFarm
$row = [pscustomobject]@{
    Name         = $farm.Name
    Id           = $farm.Id.ToString()
    BuildVersion = $farm.BuildVersion.ToString()
    Products     = @($farm.Products | ForEach-Object { $_.ToString() })
}
ConvertTo-Json -InputObject @($row) -Depth 3 -Compress
