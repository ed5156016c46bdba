"""The HTTP API and dashboard (FastAPI): ``create_app(store, app, settings)``."""

from stoic.api.app import create_app
from stoic.api.auth import ApiSettings

__all__ = ["ApiSettings", "create_app"]
