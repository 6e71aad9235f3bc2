"""What each sub-step does. The contract a step keeps (its inputs, its summary, the failure rule of
a loop over endpoints) is ``panelflow.step``.

Small domains are one module each (``sessions``, ``retention``, ``quotas``, ``reports`` …); a
backend with its own servers or API is one package (``exchange/``, ``active_directory/``,
``hyperv/``, ``microsoft365/`` …) with a private ``_backend.py`` (who the servers are, what their
answers look like, the loop over them), ``jobs.py`` (its group actions) and modules named after what
its threads do. A backend package never imports another.
"""
