"""The Threads Manager: MachPanel's thread list and JeraSoft's System Services page, inside Airflow.

One HTML page and a few JSON endpoints, a FastAPI app the API server mounts at
``/threads-manager`` (plugins/panelflow_manager_plugin.py). What the page shows comes from the
catalog (nodes, run groups, legacy threads, seed names) and from Airflow's metadata DB (pause
state, runs, next run, queue); what it changes goes through Airflow: Run now and Enable/Disable
are calls of Airflow's own REST API from the browser with the user's session, and the interval
and logging overrides are kept in an Airflow Variable that the DAG factory applies
(panelflow/overrides.py). Airflow puts no authentication in front of plugin apps, so every
endpoint here asks Airflow's auth manager itself.

The Automation Status tabs (automation.py, status.py) add what the panel DB knows: the day's
business counts in the catalog's words, the health badge, the failed-actions queue and the
emergency stop, each change recorded in the panel DB's ``automation_actions`` with the user.
"""

URL_PREFIX = "/threads-manager"
