# Every VM on the host (Get-VM) with its virtual disks (Get-VMHardDiskDrive | Get-VHD) and network
# adapters. Sizes in bytes, uptime in whole seconds, enums as names. A disk whose file cannot be
# read is listed with its path only (and a warning), so one broken disk does not hide the VM.
param()
$ErrorActionPreference = 'Stop'

$rows = foreach ($vm in Get-VM) {
    $disks = foreach ($drive in @(Get-VMHardDiskDrive -VM $vm | Where-Object { $_.Path -and $null -eq $_.DiskNumber })) {
        $vhd = $null
        try { $vhd = Get-VHD -Path $drive.Path } catch { Write-Warning ("Get-VHD {0}: {1}" -f $drive.Path, $_.Exception.Message) }
        [pscustomobject]@{
            Path               = $drive.Path
            ControllerType     = $drive.ControllerType.ToString()
            ControllerNumber   = $drive.ControllerNumber
            ControllerLocation = $drive.ControllerLocation
            VhdType            = if ($vhd) { $vhd.VhdType.ToString() } else { $null }
            VhdFormat          = if ($vhd) { $vhd.VhdFormat.ToString() } else { $null }
            FileSize           = if ($vhd) { [int64]$vhd.FileSize } else { $null }
            Size               = if ($vhd) { [int64]$vhd.Size } else { $null }
        }
    }
    $adapters = foreach ($nic in Get-VMNetworkAdapter -VM $vm) {
        $vlan = Get-VMNetworkAdapterVlan -VMNetworkAdapter $nic
        [pscustomobject]@{
            Id                       = $nic.Id
            Name                     = $nic.Name
            SwitchName               = $nic.SwitchName
            MacAddress               = $nic.MacAddress
            DynamicMacAddressEnabled = $nic.DynamicMacAddressEnabled
            IPAddresses              = @($nic.IPAddresses)
            VlanId                   = if ($vlan.OperationMode.ToString() -eq 'Access') { $vlan.AccessVlanId } else { $null }
        }
    }
    [pscustomobject]@{
        Name                 = $vm.Name
        Id                   = $vm.Id.ToString()
        State                = $vm.State.ToString()
        CPUUsage             = $vm.CPUUsage
        MemoryAssigned       = [int64]$vm.MemoryAssigned
        MemoryDemand         = [int64]$vm.MemoryDemand
        MemoryStartup        = [int64]$vm.MemoryStartup
        DynamicMemoryEnabled = $vm.DynamicMemoryEnabled
        Uptime               = [int64][math]::Floor($vm.Uptime.TotalSeconds)
        Generation           = $vm.Generation
        ProcessorCount       = $vm.ProcessorCount
        Version              = $vm.Version
        Path                 = $vm.Path
        Disks                = @($disks)
        NetworkAdapters      = @($adapters)
    }
}
ConvertTo-Json -InputObject @($rows) -Depth 4 -Compress
