"""PeerFileSyncWork: keeps the load-balanced control servers equal to the designated primary.

1   :mod:`.internal_sync` — probes every control server and reads the primary's files (the plan);
1.1 :mod:`.state_service` — the ASP.NET State Service configuration, over PowerShell;
1.2 :mod:`.files_and_registry` — the configured files (SFTP, checksums, only what changed) and
    registry keys (PowerShell).
"""
