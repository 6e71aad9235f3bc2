"""What several domains share: invoice numbering and tax (``invoicing``), charging invoices
(``payments``), the invoice PDF, the one e-mail path (``outbox``), the group-action queue every
backend's processor works (``group_actions``) and bounded retention deletes (``retention``).

Steps import services; services import hooks and the step contract, never a step module.
"""
