"""What can be checked of the container deployment without a Docker engine."""

from __future__ import annotations

import click
import yaml

from app.cli import main as cli
from app.settings import Settings
from tests.helpers import REPO

COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
ROUTELEDGER_SERVICES = {n: s for n, s in SERVICES.items() if s.get("image") == "routeledger:latest"}
# Variables read by the third-party images, not by RouteLedger.
IMAGE_VARIABLES = {"POSTGRES_USER", "POSTGRES_DB", "POSTGRES_PASSWORD"}
# Left empty in .env.example on purpose: whoever deploys must choose them.
CHOSEN_BY_THE_DEPLOYER = {"ROUTELEDGER_SECRET_KEY"}


def _env_file_variables() -> dict[str, str]:
    pairs = {}
    for line in (REPO / ".env.example").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, value = line.partition("=")
            pairs[name.strip()] = value
    return pairs


def _resolve(args: list[str]) -> click.Command:
    """The click command an argument list names, or an assertion error."""
    command: click.Command = cli
    for arg in args:
        if arg.startswith("-") or not isinstance(command, click.Group):
            break
        assert arg in command.commands, f"`routeledger {' '.join(args)}`: no command {arg!r}"
        command = command.commands[arg]
    assert not isinstance(command, click.Group), f"`routeledger {' '.join(args)}` is a group"
    return command


def test_every_service_runs_a_real_routeledger_command():
    assert set(ROUTELEDGER_SERVICES) == {"migrate", "api", "worker", "beat", "dashboard"}
    for name, service in ROUTELEDGER_SERVICES.items():
        args = service["command"]
        command = _resolve(args)
        options = {p.name for p in command.params}
        for flag in (a for a in args if a.startswith("--")):
            assert flag[2:].replace("-", "_") in options, f"{name}: unknown option {flag}"


def test_every_environment_variable_is_read_by_the_settings_module():
    known = {name.upper() for name in Settings.model_fields}
    for name, value in _env_file_variables().items():
        assert name in known | IMAGE_VARIABLES, f".env.example sets {name}, which nothing reads"
        assert value or name in CHOSEN_BY_THE_DEPLOYER, f".env.example leaves {name} empty"
    for name, service in SERVICES.items():
        for variable in service.get("environment", {}):
            assert variable in known | IMAGE_VARIABLES, f"{name} sets {variable}"
    assert all(s["env_file"] == ".env" for s in ROUTELEDGER_SERVICES.values())


def test_every_dependency_is_health_checked_or_one_shot():
    for name, service in SERVICES.items():
        for dependency, rule in service.get("depends_on", {}).items():
            condition = rule["condition"]
            if condition == "service_healthy":
                assert "healthcheck" in SERVICES[dependency], f"{name} waits on {dependency}"
            else:
                assert condition == "service_completed_successfully", f"{name}: {condition}"
                assert SERVICES[dependency]["restart"] == "no"


def test_exactly_one_beat_and_data_on_volumes():
    assert SERVICES["beat"]["deploy"]["replicas"] == 1
    assert "pgdata:/var/lib/postgresql/data" in SERVICES["postgres"]["volumes"]
    assert "healthcheck" in SERVICES["postgres"]


def test_image_is_multi_stage_and_unprivileged():
    dockerfile = (REPO / "Dockerfile").read_text()
    stages = [line for line in dockerfile.splitlines() if line.startswith("FROM ")]
    assert len(stages) >= 2
    assert "USER routeledger" in dockerfile
    assert 'ENTRYPOINT ["routeledger"]' in dockerfile


def test_no_usable_secret_key_is_shipped():
    """A key copied from an example is a key everyone knows: the dashboard would accept
    forged sessions (issue 16)."""
    from app.secret_key import weakness

    assert weakness(_env_file_variables()["ROUTELEDGER_SECRET_KEY"]) is not None
    dashboard = SERVICES["dashboard"]["environment"]["ROUTELEDGER_SECRET_KEY"]
    assert dashboard.startswith("${ROUTELEDGER_SECRET_KEY:?"), "compose must refuse an unset key"
    assert "ROUTELEDGER_SECRET_KEY" not in (REPO / "Dockerfile").read_text()
    assert Settings.model_fields["routeledger_secret_key"].default is None
