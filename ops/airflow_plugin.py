"""The Airflow plugin that puts the "Bandits" page into the Airflow UI.

Registered through the ``airflow.plugins`` entry point (``pyproject.toml``), so every
Airflow process of an environment where banditops is installed loads it (``banditops
airflow standalone``, the Docker images) with no plugins folder: the page's FastAPI app is
mounted in the API server at ``/bandits`` and an entry "Bandits" in the UI's navigation
shows it (an external view rendered in the UI's frame). ``airflow plugins`` lists it.
"""

from __future__ import annotations

from typing import Any

from airflow.plugins_manager import AirflowPlugin

from ops.bandits_page.app import create_app

#: Where the API server mounts the page.
URL_PREFIX = "/bandits"


class BanditsPlugin(AirflowPlugin):
    """The Bandits page: a FastAPI app and its navigation entry."""

    name = "banditops"
    fastapi_apps: list[Any] = [  # noqa: RUF012 (Airflow reads the class attribute)
        {"app": create_app(), "url_prefix": URL_PREFIX, "name": "Bandits page"}
    ]
    external_views: list[Any] = [  # noqa: RUF012
        {
            "name": "Bandits",
            # relative (no leading slash): the UI resolves it against its base URL
            "href": f"{URL_PREFIX.lstrip('/')}/",
            "destination": "nav",
            "url_route": "bandits",
        }
    ]
