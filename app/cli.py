"""The `routeledger` command line (DESIGN.md, Command line)."""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.console import Console

from app import secret_key
from app.eval_cli import eval_group
from app.periods import InvalidPeriod, as_utc, floor_day, floor_hour, parse_instant, utc_now
from app.settings import get_settings
from app.vocabulary import DASHBOARD_ROLES, KEY_SCOPES

if TYPE_CHECKING:
    from sqlalchemy import Connection

console = Console(stderr=True, soft_wrap=True)
# `up` lists this many dashboard logins, then how many more there are.
LOGINS_SHOWN = 5


class _Commands(click.Group):
    """Turns a missing, unreachable or unmigrated database into a one-line error, not a
    traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except Exception as error:
            problem = _database_problem(error)
            if problem is None:
                raise
            raise click.ClickException(problem) from None


def _database_problem(error: Exception) -> str | None:
    """What a database error means for the user, in a line; None for any other error. (Its
    imports here, once something failed: Alembic's alone would add 90 ms to every command.)"""
    from alembic.util.exc import CommandError
    from sqlalchemy.exc import OperationalError

    from app.db import DatabaseNotConfigured, schema_behind
    from app.services.health import NOT_MIGRATED

    if isinstance(error, DatabaseNotConfigured):
        return str(error)
    if isinstance(error, OperationalError):
        return f"cannot reach the database: {error.orig}"
    if schema_behind(error):
        return NOT_MIGRATED
    if isinstance(error, CommandError):  # Alembic's: a revision this code has no script of
        return f"{error}: the database was migrated by a newer RouteLedger; run that one"
    return None


@click.group(cls=_Commands)
def main() -> None:
    """RouteLedger: cost-and-routing observability for LLM products."""


def _migrate() -> None:
    from app.migrate import migrate

    sync = migrate()
    if sync.created:
        announced = (
            f", {sync.prices_revised} announced prices revised, {sync.prices_withdrawn} withdrawn"
            if sync.prices_revised or sync.prices_withdrawn
            else ""
        )
        console.print(
            f"price catalog: genai-prices {sync.version}, {sync.prices_added} prices added"
            f"{announced}"
        )


@main.command("migrate")
def migrate_command() -> None:
    """Upgrade the database to the newest schema and load the price catalog."""
    _migrate()
    console.print("database is at the newest migration")


@main.command()
@click.option("--host", default=None, help="default: ROUTELEDGER_API_HOST (127.0.0.1)")
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=None,
    help="default: ROUTELEDGER_API_PORT (8000)",
)
@click.option("--workers", type=int, default=1, show_default=True, help="API processes")
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="warning",
    show_default=True,
)
def api(host: str | None, port: int | None, workers: int, log_level: str) -> None:
    """Serve the HTTP API (the database must be migrated)."""
    import uvicorn

    settings = get_settings()
    uvicorn.run(
        "app.main:app",
        host=host or settings.routeledger_api_host,
        port=port or settings.routeledger_api_port,
        workers=workers,
        log_level=log_level,
        proxy_headers=True,
    )


@main.command()
@click.option("--demo", is_flag=True, help="also load a week of demo traffic")
@click.option(
    "--verbose", is_flag=True, help="show the processes' logs here too (always in DATA_DIR/logs)"
)
def up(demo: bool, verbose: bool) -> None:
    """Everything on one machine: database (embedded when DATABASE_URL is unset),
    migrations, API, worker, beat and dashboard. Ctrl-C stops it all."""
    from app.embedded import EmbeddedPostgres
    from app.supervisor import Child, StatusLine, Supervisor

    settings = get_settings()
    os.environ[secret_key.VARIABLE] = _up_secret_key(settings)
    lock = _only_up_here(settings.routeledger_data_dir)  # held until this process ends
    _ports_free(
        ("API", "ROUTELEDGER_API_PORT", settings.routeledger_api_host,
         settings.routeledger_api_port),
        ("dashboard", "ROUTELEDGER_DASHBOARD_PORT", settings.routeledger_dashboard_host,
         settings.routeledger_dashboard_port),
    )  # fmt: skip
    embedded = supervisor = None
    status = 1
    try:
        if not settings.database_url:
            embedded = EmbeddedPostgres(settings.embedded_pgdata_dir)
            console.print(f"starting embedded PostgreSQL in {settings.embedded_pgdata_dir} ...")
            os.environ["DATABASE_URL"] = embedded.start()
        get_settings.cache_clear()
        _migrate()
        api_url = _url(settings.routeledger_api_host, settings.routeledger_api_port)
        dashboard_url = _url(
            settings.routeledger_dashboard_host, settings.routeledger_dashboard_port
        )
        supervisor = Supervisor(
            [
                Child("api", ["api"], ready_url=f"{_local(api_url)}/readyz"),
                Child("worker", ["worker"]),
                Child("beat", ["beat"]),
                Child("dashboard", ["dashboard"], ready_url=f"{_local(dashboard_url)}/login"),
            ],
            log_dir=settings.logs_dir,
            echo=console if verbose else None,
        )
        supervisor.start()
        console.print(f"RouteLedger API: {api_url}  (OpenAPI: {api_url}/docs)")
        console.print(f"RouteLedger dashboard: {dashboard_url}")
        if demo:
            _load_demo(_local(api_url))
        _print_logins(demo)
        console.print(
            f"logs: {settings.logs_dir}"
            + ("" if verbose else "  (`routeledger up --verbose` shows them here)")
        )
        console.print("create a project and its keys: routeledger project create NAME --json")
        console.print("Ctrl-C stops everything")
        with StatusLine(console, supervisor, _ledger_activity) as status_line:
            status = supervisor.run_until_stopped(on_tick=status_line.update)
    finally:
        if supervisor is not None:
            supervisor.stop()
        if embedded is not None:
            console.print("stopping embedded PostgreSQL ...")
            embedded.stop()
    lock.close()
    sys.exit(status)


def _only_up_here(data_dir: Path):
    """An exclusive lock on the data folder, or a ClickException when another `up` holds it:
    a second one would start a second beat, and turn the first one's logs over."""
    import fcntl

    data_dir.mkdir(parents=True, exist_ok=True)
    lock = (data_dir / "up.lock").open("a")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise click.ClickException(
            f"`routeledger up` is already running with this data folder ({data_dir}): stop it "
            "first (Ctrl-C where it runs), or set ROUTELEDGER_DATA_DIR to another folder"
        ) from None
    return lock


def _ports_free(*servers: tuple[str, str, str, int]) -> None:
    """A ClickException naming the first (server, variable, host, port) whose port is taken."""
    import socket

    for name, variable, host, port in servers:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do
            try:
                probe.bind((host, port))
            except OSError as error:
                raise click.ClickException(
                    f"cannot serve the {name} on {host}:{port}: {error.strerror}; stop what "
                    f"listens there, or set {variable} to another port"
                ) from None


def _up_secret_key(settings) -> str:
    """The dashboard's secret key: ROUTELEDGER_SECRET_KEY when set (and fit), else the one
    `up` keeps in the data folder, made on first use."""
    try:
        if settings.routeledger_secret_key is not None:
            return secret_key.checked(settings.routeledger_secret_key.get_secret_value())
        return secret_key.local_secret_key(settings.secret_key_file)
    except secret_key.InsecureSecretKey as error:
        raise click.ClickException(str(error)) from None


def _url(host: str, port: int) -> str:
    return f"http://{host}:{port}"


def _local(url: str) -> str:
    """The URL to reach a server of this machine that listens on every address."""
    return url.replace("//0.0.0.0:", "//127.0.0.1:").replace("//[::]:", "//[::1]:")


def _print_logins(demo: bool) -> None:
    """Who can sign in to the dashboard (with the demo's passwords, which are public)."""
    from app.db import connection
    from app.services import users
    from tools.demo import DEMO_LOGINS

    with connection() as conn:
        logins = users.list_logins(conn)
    if not logins:
        console.print(
            "no dashboard login yet: routeledger user create EMAIL --project NAME --role admin"
        )
        return
    passwords = dict(DEMO_LOGINS.values()) if demo else {}
    shown = list(logins.items())[:LOGINS_SHOWN]
    for email, memberships in shown:
        roles = ", ".join(f"{m.role} of {m.project_name}" for m in memberships) or "no project"
        password = f" / {passwords[email]}" if email in passwords else ""
        console.print(f"dashboard login: {email}{password}  ({roles})")
    if len(logins) > len(shown):
        console.print(f"... and {len(logins) - len(shown)} more logins")


def _ledger_activity():
    from app.db import connection
    from app.services.activity import ledger_activity

    with connection() as conn:
        return ledger_activity(conn)


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
    from app.services.projects import InvalidProject, ProjectExists, create_project

    try:
        with transaction() as conn:
            project_id, keys = create_project(
                conn, name=name, baseline_model=baseline_model, baseline_provider=baseline_provider
            )
    except (ProjectExists, InvalidProject) as error:
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


def _project_id(conn: Connection, name: str) -> int:
    """The id of the project of this name, or an error that names it."""
    from app.services.projects import ProjectNotFound, project_id_by_name

    try:
        return project_id_by_name(conn, name=name)
    except ProjectNotFound as error:
        raise click.ClickException(str(error)) from None


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
    type=click.Choice(KEY_SCOPES),
)
def key_create(project_name: str, name: str, scopes: tuple[str, ...]) -> None:
    """Create a key; the secret is printed once."""
    from pydantic import ValidationError

    from app.db import transaction
    from app.schemas import KeyIn, describe_errors
    from app.services.projects import create_key

    try:  # the rules of POST /v1/keys
        KeyIn(name=name, scopes=list(scopes))
    except ValidationError as error:
        raise click.ClickException(
            describe_errors(error.errors(include_url=False), whole="key")
        ) from None
    with transaction() as conn:
        new = create_key(
            conn, project_id=_project_id(conn, project_name), name=name, scopes=list(scopes)
        )
    click.echo(
        json.dumps({"id": new.id, "name": new.name, "scopes": list(new.scopes), "key": new.secret})
    )


@key.command("list")
@click.option("--project", "project_name", required=True)
def key_list(project_name: str) -> None:
    from app.db import connection
    from app.services.projects import list_keys

    with connection() as conn:
        keys = list_keys(conn, project_id=_project_id(conn, project_name))
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
    from app.schemas import MAX_ID  # here, not at the top: about 30 ms of every command's start
    from app.services.projects import revoke_key

    if not 1 <= key_id <= MAX_ID:
        raise click.BadParameter(f"{key_id} is not a key id (1 to {MAX_ID})", param_hint="KEY_ID")
    with transaction() as conn:
        revoked = revoke_key(conn, project_id=_project_id(conn, project_name), key_id=key_id)
    if not revoked:
        raise click.ClickException(f"no live key {key_id} in project {project_name}")
    click.echo(f"key {key_id} revoked")


_HOUR_FORMATS = ["%Y-%m-%d", "%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S"]


def _utc_hour(value: datetime | None) -> datetime | None:
    """A date or whole hour given on the command line, taken as UTC."""
    if value is None:
        return None
    at = as_utc(value)
    if at != floor_hour(at):
        raise click.BadParameter(
            f"{value:%Y-%m-%dT%H:%M:%S} is not a whole hour", param_hint="--start"
        )
    return at


@main.command()
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--policy",
    "kinds",
    multiple=True,
    type=click.Choice(["cascade", "threshold", "all-cheap", "all-premium"]),
    help="repeat for several; default: all four",
)
@click.option(
    "--premium-share",
    "shares",
    multiple=True,
    type=click.FloatRange(0, 1),
    default=(0.3,),
    show_default=True,
    help="threshold: the share of prompts sent to the premium model; repeat for several",
)
@click.option(
    "--score",
    type=click.Choice(["length", "random"]),
    default="length",
    show_default=True,
    help="threshold: the longest prompts go premium, or a seeded random draw",
)
@click.option("--seed", type=int, default=0, show_default=True, help="for --score random")
@click.option("--cheap", default=None, help="cheap model (default: the cheaper of the two)")
@click.option("--premium", default=None, help="premium model (default: the dearer of the two)")
@click.option(
    "--pass-score",
    type=click.FloatRange(0, 1),
    default=0.8,
    show_default=True,
    help="a scored answer (MT-Bench: score / 10) passes the cascade's check at or above this",
)
@click.option(
    "--output-tokens",
    type=click.IntRange(0),
    default=16,
    show_default=True,
    help="answer tokens assumed when the file has no answer text (MMLU)",
)
@click.option(
    "--start",
    type=click.DateTime(_HOUR_FORMATS),
    default=None,
    help="UTC date or whole hour of the first simulated request; default: --days before today",
)
@click.option("--days", type=click.IntRange(1), default=1, show_default=True)
@click.option("--send", is_flag=True, help="send every simulated request through the SDK")
@click.option("--endpoint", envvar="ROUTELEDGER_ENDPOINT", help="[env ROUTELEDGER_ENDPOINT]")
@click.option(
    "--api-key", envvar="ROUTELEDGER_API_KEY", help="an ingest key [env ROUTELEDGER_API_KEY]"
)
@click.option("--customer", default="replay", show_default=True, help="customer_id sent")
@click.option("--feature", default=None, help="feature sent; default: the file or folder name")
@click.option("--experiment", default=None, help="experiment sent; default: replay-<name>")
def replay(
    path: Path,
    kinds: tuple[str, ...],
    shares: tuple[float, ...],
    score: str,
    seed: int,
    cheap: str | None,
    premium: str | None,
    pass_score: float,
    output_tokens: int,
    start: datetime | None,
    days: int,
    send: bool,
    endpoint: str | None,
    api_key: str | None,
    customer: str,
    feature: str | None,
    experiment: str | None,
) -> None:
    """Simulate routing policies over per-prompt evaluation results (PATH: a RouteLLM CSV,
    MT-Bench judgements, or a folder of them) and print what each costs and loses.

    Tokens are estimated as ceil(characters / 4); prices come from the genai-prices
    catalog; the cascade escalates exactly the prompts the cheap model failed.
    With --send, every simulated request goes to the service as experiment arm <policy>."""
    from rich.table import Table

    from tools import replay as sim

    if send and not (endpoint and api_key):
        raise click.UsageError("--send needs --endpoint and --api-key (or their env variables)")
    start = _utc_hour(start) or floor_day(utc_now()) - timedelta(days=days)
    policies = []
    for kind in kinds or ("cascade", "threshold", "all-cheap", "all-premium"):
        if kind == "threshold":
            policies += [sim.Policy(kind, share, score, seed) for share in shares]
        else:
            policies.append(sim.Policy(kind))
    try:
        evalset = sim.load_eval(path, pass_score=pass_score, output_tokens=output_tokens)
        prices = sim.catalog_price_book()
        route = sim.choose_route(evalset, prices=prices, at=start, cheap=cheap, premium=premium)
        runs, reference = sim.replay(
            evalset, policies=policies, route=route, prices=prices, start=start, days=days
        )
    except sim.ReplayError as error:
        raise click.ClickException(str(error)) from None

    out = Console()
    if not out.is_terminal:
        out.width = 120  # a file or a pipe gets the whole table, unwrapped
    out.print(
        f"{evalset.name}: {len(evalset.items)} prompts from {len(evalset.files)} file(s), "
        f"{start:%Y-%m-%d %H:%M} UTC + {days} day(s); tokens = ceil(characters / 4)"
    )
    for tier, model in (("cheap", route.cheap), ("premium", route.premium)):
        price = sim.price_of(prices, model, start)
        out.print(
            f"{tier:8} {model} ({price.provider}): ${price.input_per_mtok} in, "
            f"${price.output_per_mtok} out per million tokens"
        )
    table = Table("policy", "requests", "premium share", "escalation rate", "quality",
                  "cost (USD)", "vs all-premium")  # fmt: skip
    for run in runs:
        table.add_row(
            run.policy.name,
            str(len(run.requests)),
            f"{run.premium_share:.1%}",
            f"{run.escalation_rate:.1%}",
            f"{run.quality:.4f}",
            f"{run.cost_usd:.6f}",
            f"{run.cost_usd / reference.cost_usd:.1%}" if reference.cost_usd else "-",
        )
    out.print(table)
    if send:
        _send_replay(
            runs,
            endpoint=endpoint,
            api_key=api_key,
            customer=customer,
            feature=feature or evalset.name,
            experiment=experiment or f"replay-{evalset.name}",
        )


def _send_replay(
    runs: list, *, endpoint: str, api_key: str, customer: str, feature: str, experiment: str
) -> None:
    from rich.progress import Progress
    from routeledger import RouteLedger

    from tools.replay import send

    # A wrong endpoint or key would leave the SDK holding every event for ten minutes. Both
    # as the SDK takes them: a key without its line break, an endpoint without its last "/".
    _wait_for_api(endpoint.rstrip("/"), seconds=10)
    _check_ingest_key(endpoint.rstrip("/"), api_key.strip())
    total = sum(len(run.requests) for run in runs)
    client = RouteLedger(api_key=api_key, endpoint=endpoint, max_queue=total)
    with Progress(console=console) as progress:
        task = progress.add_task(f"sending {total} requests", total=total)
        send(client, runs, customer_id=customer, feature=feature, experiment=experiment)
        deadline = time.monotonic() + 600
        while not client.flush(timeout=0.5) and time.monotonic() < deadline:
            stats = client.stats()
            progress.update(task, completed=stats["sent"] + stats["duplicates"] + stats["rejected"])
        stats = client.stats()
        progress.update(task, completed=stats["sent"] + stats["duplicates"] + stats["rejected"])
    delivered = client.shutdown(timeout=5)
    console.print(
        f"experiment {experiment}, feature {feature}, customer {customer}: "
        f"{stats['sent']} stored, {stats['duplicates']} already stored, "
        f"{stats['rejected']} rejected",
        soft_wrap=True,
    )
    if not delivered or stats["rejected"]:
        raise click.ClickException(
            f"not every request was stored ({stats['spooled']} spooled for later, "
            f"{stats['dropped']} dropped); see the messages above"
        )


# --- the dashboard and its logins (issue 6) ----------------------------------------------


@main.command()
@click.option("--host", default=None, help="default: ROUTELEDGER_DASHBOARD_HOST (127.0.0.1)")
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=None,
    help="default: ROUTELEDGER_DASHBOARD_PORT (8050)",
)
@click.option("--threads", type=int, default=8, show_default=True)
def dashboard(host: str | None, port: int | None, threads: int) -> None:
    """Serve the dashboard (the database must be migrated; ROUTELEDGER_SECRET_KEY set)."""
    from dashboards.app import serve

    settings = get_settings()
    try:
        serve(
            host=host or settings.routeledger_dashboard_host,
            port=port or settings.routeledger_dashboard_port,
            threads=threads,
        )
    except secret_key.InsecureSecretKey as error:
        raise click.ClickException(str(error)) from None


@main.group()
def user() -> None:
    """Dashboard logins."""


@user.command("create")
@click.argument("email")
@click.option("--project", "project_name", required=True)
@click.option("--role", type=click.Choice(DASHBOARD_ROLES), required=True)
@click.option(
    "--password",
    default=None,
    help="default: ROUTELEDGER_USER_PASSWORD, else asked (a new login needs one)",
)
def user_create(email: str, project_name: str, role: str, password: str | None) -> None:
    """A dashboard login with a role in a project; for an existing login, the role in
    that project (and a new password when one is given)."""
    from app.db import transaction
    from app.services import users

    password = password or os.environ.get("ROUTELEDGER_USER_PASSWORD")
    try:
        with transaction() as conn:
            project_id = _project_id(conn, project_name)
            user_id = users.user_id_by_email(conn, email=email)
            if user_id is None:
                user_id = users.create_user(
                    conn,
                    email=email,
                    password=password
                    or click.prompt("password", hide_input=True, confirmation_prompt=True),
                )
            elif password:
                users.set_password(conn, user_id=user_id, password=password)
            users.grant(conn, user_id=user_id, project_id=project_id, role=role)
    except users.InvalidUser as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"{users.normalize_email(email)}: {role} of {project_name}")


@user.command("sign-out")
@click.argument("email")
def user_sign_out(email: str) -> None:
    """End every dashboard session of a login now (a lost laptop, a leaver)."""
    from app.db import transaction
    from app.services import sessions, users

    with transaction() as conn:
        try:
            user_id = users.user_id_by_email(conn, email=email)
        except users.InvalidUser as error:
            raise click.ClickException(str(error)) from None
        if user_id is None:
            raise click.ClickException(f"no dashboard login {email}")
        ended = sessions.end_sessions_of(conn, user_id=user_id)
    click.echo(f"{users.normalize_email(email)}: {ended} session(s) ended")


def _wait_for_api(endpoint: str, *, seconds: float) -> None:
    """Until the API at `endpoint` is ready; a ClickException once `seconds` have passed."""
    import httpx

    deadline = time.monotonic() + seconds
    while True:
        try:
            if httpx.get(f"{endpoint}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise click.ClickException(f"the API at {endpoint} is not ready")
        time.sleep(0.3)


def _check_ingest_key(endpoint: str, api_key: str) -> None:
    """A ClickException unless the API takes events with this key. An empty batch is what it
    is asked: the API answers 422 (no events) once it took the key and its scope; anything
    else (401, 403, a rate limit, a proxy's page) is said as it came."""
    import httpx

    try:
        answer = httpx.post(
            f"{endpoint}/v1/requests",
            json={"requests": []},
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=10,
        )
    except httpx.HTTPError as error:
        raise click.ClickException(f"the API at {endpoint} cannot be asked: {error}") from None
    if answer.status_code == 422:
        return
    try:
        detail = answer.json()["detail"]
    except (ValueError, KeyError, TypeError):
        detail = answer.text[:200]
    raise click.ClickException(
        f"the API at {endpoint} refuses this key (HTTP {answer.status_code}): {detail}"
    )


def _load_demo(endpoint: str, **plan_options) -> None:
    from tools import demo

    _wait_for_api(endpoint, seconds=60)
    console.print("loading demo traffic through the SDK ...")
    try:
        result = demo.load(endpoint=endpoint, plan=demo.plan_ending_now(**plan_options))
    except demo.DemoNotDelivered as error:
        raise click.ClickException(str(error)) from None
    console.print(f"demo: {result.requests} requests in project {result.project}")


@main.command("demo")
@click.option("--endpoint", default=None, help="the API; default: ROUTELEDGER_API_HOST:PORT")
@click.option("--days", type=click.IntRange(2, 60), default=8, show_default=True)
@click.option("--requests-per-hour", type=click.IntRange(1, 10_000), default=40, show_default=True)
def demo_command(endpoint: str | None, days: int, requests_per_hour: int) -> None:
    """Send a week of demo traffic through the SDK to a running API (project `demo`)."""
    from tools.demo import DEMO_LOGINS

    settings = get_settings()
    _load_demo(
        endpoint or f"http://{settings.routeledger_api_host}:{settings.routeledger_api_port}",
        days=days,
        requests_per_hour=requests_per_hour,
    )
    for role, (email, password) in DEMO_LOGINS.items():
        console.print(f"demo login ({role}): {email} / {password}")


@main.command()
@click.option("--concurrency", type=int, default=2, show_default=True, help="worker processes")
@click.option("--queues", default="celery", show_default=True, help="comma-separated")
@click.option("--loglevel", default="info", show_default=True)
def worker(concurrency: int, queues: str, loglevel: str) -> None:
    """A Celery worker: rollups, margins, drift, alerts, emails and re-pricing."""
    from workers.celery_app import celery_app

    celery_app.worker_main(
        [
            "worker",
            f"--concurrency={concurrency}",
            f"--queues={queues}",
            f"--loglevel={loglevel}",
            "--without-gossip",
        ]
    )


@main.command()
@click.option("--loglevel", default="info", show_default=True)
def beat(loglevel: str) -> None:
    """The Celery beat: queues every job on its schedule (run one per deployment)."""
    from workers.celery_app import celery_app

    get_settings().routeledger_data_dir.mkdir(parents=True, exist_ok=True)
    celery_app.start(["beat", f"--loglevel={loglevel}"])


@main.group()
def jobs() -> None:
    """The periodic jobs, run by hand."""


@jobs.command("run")
@click.argument("name")
@click.option("--project", "project_name", help="reprice correction: the project")
@click.option("--model", help="reprice correction: the model whose prices were wrong")
@click.option("--start", help="reprice correction: from this UTC instant (ISO 8601)")
@click.option("--end", help="reprice correction: until this UTC instant, excluded")
@click.option("--reason", help="reprice correction: why, kept in the audit record")
def jobs_run(
    name: str,
    project_name: str | None,
    model: str | None,
    start: str | None,
    end: str | None,
    reason: str | None,
) -> None:
    """Run job NAME now, in this process, and print its summary as JSON.

    `reprice` alone prices the requests that had no price; with --project, --model,
    --start, --end and --reason it prices that model's attempts in that range again, with an
    audit record of why."""
    from app.db import get_engine
    from app.services.jobs import JOBS, run_job

    if name not in JOBS:
        raise click.BadParameter(f"one of {', '.join(JOBS)}", param_hint="NAME")
    correction = (project_name, model, start, end, reason)
    given = [value is not None for value in correction]
    # An empty or blank value is no value: a blank reason would explain nothing.
    if any(given) and (name != "reprice" or not all(v and v.strip() for v in correction)):
        raise click.UsageError(
            "a correction is `reprice` with --project, --model, --start, --end and --reason"
        )
    if not any(given):
        click.echo(json.dumps(run_job(get_engine(), name), default=_json_value))
        return
    from dataclasses import asdict

    from app.db import connection
    from app.services.reprice import correct_prices

    since, until = _utc_instant(start), _utc_instant(end)
    if since >= until:
        raise click.BadParameter("must be after --start", param_hint="--end")
    with connection() as conn:
        project_id = _project_id(conn, project_name)
    change = correct_prices(
        get_engine(), project_id=project_id, model=model, start=since, end=until, reason=reason
    )
    click.echo(json.dumps(asdict(change), default=_json_value))


def _json_value(value: object) -> str:
    """What JSON cannot hold, as text: money as a plain decimal (str would give 1E-7)."""
    return format(value, "f") if isinstance(value, Decimal) else str(value)


def _utc_instant(value: str) -> datetime:
    try:
        return parse_instant(value, name="--start/--end")
    except InvalidPeriod as error:
        raise click.BadParameter(str(error)) from None


@main.group("export")
def export_group() -> None:
    """Finance CSV exports (the same files as GET /v1/exports/*.csv), with a progress bar."""


def _folder_exists(_ctx, param, path: Path) -> Path:
    if not path.parent.is_dir():
        raise click.BadParameter(f"{path.parent} is not a folder", param=param)
    return path


def _export_options(command):
    """--project, --start, --end and -o, shared by both exports."""
    command = click.option(
        "-o",
        "--output",
        required=True,
        # Its folder must exist: found out before the export runs, not after.
        type=click.Path(dir_okay=False, writable=True, path_type=Path),
        callback=_folder_exists,
    )(command)
    command = click.option(
        "--end", default=None, help="whole UTC hour or date; default: the next hour"
    )(command)
    command = click.option(
        "--start", default=None, help="whole UTC hour or date; default: a day before --end"
    )(command)
    return click.option("--project", "project_name", required=True)(command)


@export_group.command("customers")
@_export_options
@click.option("--granularity", type=click.Choice(["day", "month"]), default="month")
def export_customers(
    project_name: str, start: str | None, end: str | None, output: Path, granularity: str
) -> None:
    """Per customer and per day or month: requests, tokens, cost, revenue, margin."""
    from app.services import exports

    def export(conn, project_id, within):
        total = len(exports.periods(within, granularity))
        chunks = exports.customers_csv(
            conn, project_id=project_id, within=within, granularity=granularity
        )
        return total, "periods", chunks

    _export(project_name, start, end, output, export)


@export_group.command("requests")
@_export_options
@click.option("--feature", default=None)
@click.option("--customer-id", default=None)
@click.option("--experiment", default=None)
@click.option("--arm", default=None)
def export_requests(
    project_name: str,
    start: str | None,
    end: str | None,
    output: Path,
    feature: str | None,
    customer_id: str | None,
    experiment: str | None,
    arm: str | None,
) -> None:
    """One row per request, oldest first."""
    from app.services import exports
    from app.services.metrics import Filters

    filters = Filters(feature=feature, customer_id=customer_id, experiment=experiment, arm=arm)

    def export(conn, project_id, within):
        total = exports.count_requests(conn, project_id=project_id, within=within, filters=filters)
        chunks = exports.requests_csv(conn, project_id=project_id, within=within, filters=filters)
        return total, "rows", chunks

    _export(project_name, start, end, output, export)


def _export(project_name: str, start: str | None, end: str | None, output: Path, export) -> None:
    """Writes an export to a file with a progress bar; `export(conn, project_id, within)`
    gives the total, its unit and the chunks."""
    from rich.progress import Progress

    from app.db import connection
    from app.periods import hourly_period

    try:
        within = hourly_period(start, end)
    except InvalidPeriod as error:
        raise click.UsageError(str(error)) from None
    with connection() as conn:
        project_id = _project_id(conn, project_name)
        total, unit, chunks = export(conn, project_id, within)
        with output.open("wb") as f, Progress(console=console) as bar:
            task = bar.add_task(output.name, total=total)
            for chunk in chunks:
                f.write(chunk.data)
                bar.advance(task, chunk.done)
    console.print(
        f"{output}: {total} {unit}, "
        f"{within.start:%Y-%m-%d %H:%M} to {within.end:%Y-%m-%d %H:%M} UTC",
        soft_wrap=True,
    )


main.add_command(eval_group)

if __name__ == "__main__":
    main()
