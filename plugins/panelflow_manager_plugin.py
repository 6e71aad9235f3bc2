"""Registers the Threads Manager page (panelflow/manager) with Airflow: the app and its nav entry.

Every Airflow component loads plugins, task processes included, so the FastAPI app (and Airflow's
API-server security code it imports) is built on the first request to it, in the API server only.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

URL_PREFIX = "/threads-manager"  # = panelflow.manager.URL_PREFIX (importing it here would load the package)


class _ThreadsManagerApp:
    """ASGI app that builds the real one (panelflow.manager.app) when first called."""

    def __init__(self) -> None:
        self._app = None

    async def __call__(self, scope, receive, send):
        if self._app is None:
            from panelflow.manager.app import create_app

            self._app = create_app()
        await self._app(scope, receive, send)

    def __repr__(self) -> str:
        return "panelflow.manager.app:create_app()"


class PanelflowThreadsManager(AirflowPlugin):
    name = "panelflow_threads_manager"
    fastapi_apps = [{"app": _ThreadsManagerApp(), "url_prefix": URL_PREFIX, "name": "Threads Manager"}]
    external_views = [{
        "name": "Threads Manager",
        "href": f"{URL_PREFIX}/",
        "destination": "nav",
        "url_route": "threads-manager",
        "category": "panelflow",
    }]
