"""The `routeledger` command line (DESIGN.md, Command line)."""

from __future__ import annotations

import json
import os
import sys

import click
from rich.console import Console

from app.settings import get_settings

console = Console(stderr=True)


class _Commands(click.Group):
    """Turns a missing or unreachable database into a one-line error, not a traceback."""

    def invoke(self, ctx: click.Context):
        from sqlalchemy.exc import OperationalError

        from app.db import DatabaseNotConfigured

        try:
            return super().invoke(ctx)
        except DatabaseNotConfigured as error:
            raise click.ClickException(str(error)) from None
        except OperationalError as error:
            raise click.ClickException(f"cannot reach the database: {error.orig}") from None


@click.group(cls=_Commands)
def main() -> None:
    """RouteLedger: cost-and-routing observability for LLM products."""


def _migrate() -> None:
    from app import migrate
    from app.db import transaction
    from app.services.pricing import sync_catalog

    migrate.upgrade()
    with transaction() as conn:
        sync = sync_catalog(conn)
    if sync.created:
        console.print(
            f"price catalog: genai-prices {sync.version}, {sync.prices_added} prices added"
        )


@main.command("migrate")
def migrate_command() -> None:
    """Upgrade the database to the newest schema and load the price catalog."""
    _migrate()
    console.print("database is at the newest migration")


@main.command()
@click.option("--host", default=None, help="default: ROUTELEDGER_API_HOST (127.0.0.1)")
@click.option("--port", type=int, default=None, help="default: ROUTELEDGER_API_PORT (8000)")
@click.option("--workers", type=int, default=1, show_default=True, help="API processes")
def api(host: str | None, port: int | None, workers: int) -> None:
    """Serve the HTTP API (the database must be migrated)."""
    import uvicorn

    settings = get_settings()
    uvicorn.run(
        "app.main:app",
        host=host or settings.routeledger_api_host,
        port=port or settings.routeledger_api_port,
        workers=workers,
        log_level="warning",
        proxy_headers=True,
    )


@main.command()
@click.option("--demo", is_flag=True, help="also load demo traffic (not available yet)")
def up(demo: bool) -> None:
    """Everything on one machine: database (embedded when DATABASE_URL is unset),
    migrations and the API. Ctrl-C stops it all."""
    from app.embedded import EmbeddedPostgres
    from app.supervisor import Child, Supervisor

    if demo:
        raise click.UsageError("--demo arrives with the dashboard; run `routeledger up` for now")
    settings = get_settings()
    embedded = None
    if not settings.database_url:
        embedded = EmbeddedPostgres(settings.embedded_pgdata_dir)
        console.print(f"starting embedded PostgreSQL in {settings.embedded_pgdata_dir} ...")
        os.environ["DATABASE_URL"] = embedded.start()
        get_settings.cache_clear()
    status = 1
    try:
        _migrate()
        host, port = settings.routeledger_api_host, settings.routeledger_api_port
        supervisor = Supervisor([Child("api", ["api", "--host", host, "--port", str(port)])])
        supervisor.start()
        console.print(
            f"RouteLedger API: http://{host}:{port}  (OpenAPI: http://{host}:{port}/docs)"
        )
        console.print("create a project and its keys: routeledger project create NAME --json")
        console.print("Ctrl-C stops everything")
        status = supervisor.run_until_stopped()
    finally:
        if embedded is not None:
            console.print("stopping embedded PostgreSQL ...")
            embedded.stop()
    sys.exit(status)


@main.group()
def project() -> None:
    """Projects and their keys."""


@project.command("create")
@click.argument("name")
@click.option(
    "--baseline-model", default=None, help="the frontier model savings are measured against"
)
@click.option("--baseline-provider", default=None)
@click.option("--json", "as_json", is_flag=True, help="print the project and its keys as JSON")
def project_create(
    name: str, baseline_model: str | None, baseline_provider: str | None, as_json: bool
) -> None:
    """Create a project with an ingest, a read and an admin key (shown once)."""
    from app.db import transaction
    from app.services.projects import ProjectExists, create_project

    try:
        with transaction() as conn:
            project_id, keys = create_project(
                conn, name=name, baseline_model=baseline_model, baseline_provider=baseline_provider
            )
    except ProjectExists as error:
        raise click.ClickException(str(error)) from None
    result = {
        "project": name,
        "project_id": project_id,
        "baseline_model": baseline_model,
        "keys": {key.scopes[0]: key.secret for key in keys},
    }
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        click.echo(f"project {name} (id {project_id})")
        for scope, secret in result["keys"].items():
            click.echo(f"  {scope:7} key: {secret}")
        click.echo("keys are shown once; store them now")


@main.group()
def key() -> None:
    """API keys of a project."""


@key.command("create")
@click.option("--project", "project_name", required=True)
@click.option("--name", required=True)
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    required=True,
    type=click.Choice(["ingest", "read", "admin"]),
)
def key_create(project_name: str, name: str, scopes: tuple[str, ...]) -> None:
    """Create a key; the secret is printed once."""
    from app.db import transaction
    from app.services.projects import ProjectNotFound, create_key, project_id_by_name

    try:
        with transaction() as conn:
            new = create_key(
                conn,
                project_id=project_id_by_name(conn, name=project_name),
                name=name,
                scopes=list(scopes),
            )
    except ProjectNotFound as error:
        raise click.ClickException(str(error)) from None
    click.echo(
        json.dumps({"id": new.id, "name": new.name, "scopes": list(new.scopes), "key": new.secret})
    )


@key.command("list")
@click.option("--project", "project_name", required=True)
def key_list(project_name: str) -> None:
    from app.db import connection
    from app.services.projects import ProjectNotFound, list_keys, project_id_by_name

    try:
        with connection() as conn:
            keys = list_keys(conn, project_id=project_id_by_name(conn, name=project_name))
    except ProjectNotFound as error:
        raise click.ClickException(str(error)) from None
    for k in keys:
        state = f"revoked {k['revoked_at']:%Y-%m-%d}" if k["revoked_at"] else "live"
        click.echo(
            f"{k['id']:>5}  {k['display_prefix']}…  {','.join(k['scopes']):20} "
            f"{state:18} {k['name']}"
        )


@key.command("revoke")
@click.option("--project", "project_name", required=True)
@click.argument("key_id", type=int)
def key_revoke(project_name: str, key_id: int) -> None:
    """Revoke a key now: every later call with it is refused."""
    from app.db import transaction
    from app.services.projects import ProjectNotFound, project_id_by_name, revoke_key

    try:
        with transaction() as conn:
            revoked = revoke_key(
                conn, project_id=project_id_by_name(conn, name=project_name), key_id=key_id
            )
    except ProjectNotFound as error:
        raise click.ClickException(str(error)) from None
    if not revoked:
        raise click.ClickException(f"no live key {key_id} in project {project_name}")
    click.echo(f"key {key_id} revoked")


if __name__ == "__main__":
    main()
