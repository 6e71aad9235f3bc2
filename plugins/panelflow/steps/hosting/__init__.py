"""Web hosting (Hostmatic) on IIS, FSRM, MySQL/MariaDB and SQL Server: GroupActionWorkGeneral,
DiskQuotaWork, ProvisioningWork's white-label bindings, and the bandwidth, transfer and backup threads.

Every hosting server is a ``hosting_servers`` row (0024) naming the Airflow connection that reaches
it: psrp for Windows (the scripts of ``include/powershell/iis``, ``fsrm`` and ``mssql`` run with
their values as PSRP parameters), ``hosted_mysql`` for MySQL/MariaDB. :mod:`._backend` holds the
servers, the sites and the loop over servers; :mod:`.jobs` (GroupActionWorkGeneral),
:mod:`.disk_quotas` (DiskQuotaWork) and :mod:`.white_label` (ProvisioningWork 35) the steps.
Clock: ``interval.end`` only.
"""
