"""panelflow: a hosting control panel's background threads rebuilt as Airflow 3 DAGs.

Lives in Airflow's plugins folder so the scheduler, dag-processor, triggerer and workers all
import it from the same place; ``plugins/.airflowignore`` keeps Airflow's plugin loader from
importing every module in it as a would-be plugin.
"""
