"""From order to invoice: ProvisioningWork 1 (the service queue), 22 (Work Provision), 21 (Work PPU).

The panel places an order (``service_orders`` and its ``service_order_items``, migration 0028);
:mod:`.service_queue` turns its items into group-action jobs on the existing queue and follows
them; :mod:`.activation` activates the order's subscriptions once every job succeeded, so
BillingWork invoices them from their first bill date; :mod:`.pay_per_use` rates usage over what
a plan includes into ``ppu`` invoices. What an item's payload holds per backend and action is
:mod:`.payloads`.

Not a backend package: it talks to no server, only to the panel DB and the queue, and imports
no other step package (the payloads it queues are data, documented in :mod:`.payloads`).
"""
