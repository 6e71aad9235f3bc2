# CPU and memory of this Exchange server, for server_stats: '% Processor Time' of all processors
# and the available memory, sampled $MaxSamples times $SampleInterval seconds apart (one instant
# reading of a busy Exchange server says little), and the installed memory, so that the used
# memory can be derived. The counter paths are the English ones (Get-Counter on a localised
# Windows wants localised names). No Exchange cmdlet is needed here: the snap-in is not loaded.
param(
    [ValidateRange(1, 60)][int]$SampleInterval = 2,
    [ValidateRange(1, 30)][int]$MaxSamples = 3
)
$ErrorActionPreference = 'Stop'

$counters = '\Processor(_Total)\% Processor Time', '\Memory\Available MBytes'
$samples = @(foreach ($set in Get-Counter -Counter $counters -SampleInterval $SampleInterval -MaxSamples $MaxSamples) {
    foreach ($sample in $set.CounterSamples) {
        [pscustomobject]@{
            Path        = $sample.Path
            CookedValue = [double]$sample.CookedValue
            Timestamp   = $set.Timestamp.ToUniversalTime().ToString('o')
        }
    }
})
$computer = Get-CimInstance -ClassName Win32_ComputerSystem
$reading = [pscustomobject]@{
    ComputerName        = $env:COMPUTERNAME
    TotalPhysicalMemory = [int64]$computer.TotalPhysicalMemory
    Samples             = $samples
}
ConvertTo-Json -InputObject @($reading) -Depth 4 -Compress
