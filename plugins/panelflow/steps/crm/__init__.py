"""Dynamics 365 CRM through the Dataverse Web API: GroupActionWorkCRM and SyncFromBackendWork 1.

Every Dataverse environment the panel manages is a ``crm_organizations`` row (0034) naming its
organisation URL and the Airflow connection of the app registration that signs in to it
(:class:`panelflow.hooks.dynamics.DynamicsHook`). :mod:`._backend` holds the organisations and the
loop over them; :mod:`.jobs` works the ``crm`` group-action queue (GroupActionWorkCRM 1),
:mod:`.names` syncs first and last names both ways (GroupActionWorkCRM 2) and :mod:`.sync` mirrors
business units, roles and users into the panel (SyncFromBackendWork 1). Clock: ``interval.end`` only.
"""
