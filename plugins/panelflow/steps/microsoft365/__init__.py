"""The Microsoft 365 backend: tenants through Microsoft Graph, CSP accounts through Partner Center,
Teams direct routing through the MicrosoftTeams PowerShell module, Azure retail prices.

``_backend`` holds who the tenants and CSP profiles are and the loops over them; ``jobs`` the
Office365Work group actions; every other module is what one thread (or one of its steps) does.
"""
