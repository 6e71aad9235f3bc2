"""Voice on the SIP platform: VoiceSyncWork, VoiceCurrentLimitSyncWork, GroupActionWorkSIP, the SIP
half of CallDataProcessWork, GroupActionWorkLync's call bundles and ProvisioningWork's SIP steps.

Every platform is a ``sip_platforms`` row (0022) naming the Airflow connection of
:class:`panelflow.hooks.sip_platform.SipPlatformHook`; the panel keeps its view of each platform's
companies, subscribers and numbers, the call records it imported, the bundles' usage and the SIP
contracts (migration 0022 explains the model and who writes what). :mod:`._backend` holds the
platforms and the loop over them; :mod:`.jobs` (GroupActionWorkSIP), :mod:`.sync` (VoiceSyncWork),
:mod:`.bundles`, :mod:`.usage`, :mod:`.cleanup` (VoiceCurrentLimitSyncWork, GroupActionWorkLync 2,
ProvisioningWork 15), :mod:`.calls` (CallDataProcessWork) and :mod:`.contracts` (ProvisioningWork 31)
the steps. Clock: ``interval.end`` only. With no platform configured every step says so in its
summary and succeeds, so the voice threads run green on a panel without SIP.
"""
