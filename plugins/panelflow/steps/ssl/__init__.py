"""SSL certificate orders at DigiCert and Sectigo: ProvisioningWork steps 2 and 4.

A customer's order is an ``ssl_orders`` row (migration 0030) that the panel's order form writes
when it places the order at the vendor. :mod:`.digicert` (step 2) asks CertCentral about the
pending DigiCert orders and then bills and estimates every vendor's issued orders
(:mod:`.billing`); :mod:`.sectigo` (step 4) asks Sectigo's reseller API about the pending Sectigo
orders. :mod:`._backend` holds what both vendors share: the pending orders, the verification of
what a vendor issued, storing it once, and the loop. Clock: ``interval.end`` only.
"""
