"""The Dash app: pages under dashboards/pages, behind the logins of dashboards.auth."""

from __future__ import annotations

from pathlib import Path

from dash import Dash

from app.settings import get_settings
from dashboards import auth, downloads, shell

HERE = Path(__file__).resolve().parent


def create_app() -> Dash:
    settings = get_settings()
    app = Dash(
        __name__,
        use_pages=True,
        pages_folder=str(HERE / "pages"),
        assets_folder=str(HERE / "assets"),
        # Layouts depend on the signed-in user and the URL, so they are built per request.
        suppress_callback_exceptions=True,
        title="RouteLedger",
        update_title=None,
        serve_locally=True,
    )
    public_url = settings.routeledger_public_url or ""
    auth.install(
        app.server,
        secret_key=settings.routeledger_secret_key,
        secure_cookies=public_url.startswith("https://"),
    )
    downloads.install(app.server)
    app.layout = shell.layout
    return app


def serve(*, host: str, port: int, threads: int = 8) -> None:
    import waitress

    waitress.serve(create_app().server, host=host, port=port, threads=threads, ident="routeledger")
