"""Hyper-V over PowerShell remoting: HyperVHomeBackendThread, GroupActionWorkVPS and the VPS threshold alerts.

Every Hyper-V host is a ``hyperv_hosts`` row (0018) naming the Airflow psrp connection that reaches
it; the steps run the scripts of ``include/powershell/hyperv`` and ``include/powershell/windows`` on
it with their values as PSRP parameters. :mod:`._backend` holds the hosts, the records the scripts
print and the loop over hosts; :mod:`.inventory`, :mod:`.stats` (HyperVHomeBackendThread),
:mod:`.jobs`, :mod:`.storage` (GroupActionWorkVPS) and :mod:`.thresholds` (ProvisioningWork) the
steps. Clock: ``interval.end`` only — samples, sync times, deletions and alerts are all keyed by it.
"""
