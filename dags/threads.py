"""Every live thread of the panelflow catalog (include/catalog/*.yaml) as an airflow dag."""

from panelflow.factory import build_dags

globals().update(build_dags())
