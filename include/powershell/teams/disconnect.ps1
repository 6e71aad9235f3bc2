# Ends the runspace's Teams session: the module forgets the tenant's tokens before the panel closes
# the runspace pool.
$ErrorActionPreference = 'Stop'
$null = Disconnect-MicrosoftTeams
