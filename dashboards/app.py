"""The Dash app: pages under dashboards/pages, behind the logins of dashboards.auth."""

from __future__ import annotations

from pathlib import Path

from dash import Dash
from werkzeug.middleware.proxy_fix import ProxyFix

from app import secret_key
from app.settings import get_settings
from dashboards import auth, downloads, shell

HERE = Path(__file__).resolve().parent


def create_app() -> Dash:
    """The dashboard; InsecureSecretKey when ROUTELEDGER_SECRET_KEY is unset or weak."""
    settings = get_settings()
    configured_key = settings.routeledger_secret_key
    signing_key = secret_key.checked(configured_key.get_secret_value() if configured_key else None)
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
        secret_key=signing_key,
        secure_cookies=public_url.startswith("https://"),
    )
    if settings.routeledger_trusted_proxies:
        # The client's address, as the proxies report it: the login throttle counts by it.
        hops = settings.routeledger_trusted_proxies
        app.server.wsgi_app = ProxyFix(app.server.wsgi_app, x_for=hops)
    downloads.install(app.server)
    app.layout = shell.layout
    return app


def serve(*, host: str, port: int, threads: int = 8) -> None:
    import waitress

    waitress.serve(create_app().server, host=host, port=port, threads=threads, ident="routeledger")
