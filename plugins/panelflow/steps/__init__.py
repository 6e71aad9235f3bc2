"""What each sub-step does: small functions, one domain a module.

A step function names the inputs it needs as its parameters; the task supplies them:

- ``interval``: the run's data interval (``.start``, ``.end``) — the step's only clock;
- ``panel_db``: the panel database hook (Airflow connection ``panel_db``);
- ``params``: the run's params;
- ``log``: the task's logger;
- ``item``: for a step with ``map_over``, the one item (tenant, server …) this mapped task
  instance handles — the ``map_over`` function, taking the same inputs, returns the list.

It returns a small summary dict (rows read, written, skipped) kept as the task's XCom.
"""

STEP_INPUTS = ("interval", "panel_db", "params", "log", "item")
