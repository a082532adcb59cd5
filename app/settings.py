"""The one place configuration is read: environment variables, documented in README.md."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import platformdirs
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    database_url: str | None = Field(
        default=None, description="PostgreSQL URL; unset: embedded PostgreSQL in the data dir"
    )
    celery_broker_url: str | None = Field(
        default=None, description="Redis or RabbitMQ URL; unset: the database is the broker"
    )
    smtp_url: str | None = Field(
        default=None, description="smtp:// or smtps:// URL; unset: .eml files in the outbox"
    )
    routeledger_secret_key: SecretStr | None = Field(
        default=None,
        description="signs dashboard sessions: the dashboard refuses to start without a long "
        "random one (`up` makes its own in the data dir)",
    )
    routeledger_data_dir: Path = Field(
        default=Path(platformdirs.user_data_dir("routeledger")),
        description="embedded database, outbox and other local state",
    )
    routeledger_api_host: str = "127.0.0.1"
    routeledger_api_port: int = 8000
    routeledger_dashboard_host: str = "127.0.0.1"
    routeledger_dashboard_port: int = 8050
    routeledger_public_url: str | None = Field(
        default=None, description="dashboard URL used in emails; default http://host:port"
    )
    routeledger_trusted_proxies: int = Field(
        default=0,
        ge=0,
        description="proxies in front of the dashboard that set X-Forwarded-For (a TLS proxy: "
        "1); the login throttle counts failures by the address they report",
    )
    routeledger_rate_limit_per_second: float = Field(
        default=50.0, description="default calls per second per API key (burst: 2 seconds' worth)"
    )
    routeledger_db_pool_size: int = 10
    routeledger_max_event_age_days: int = Field(
        default=400, ge=1, description="events older than this are refused"
    )
    routeledger_max_period_days: int = Field(
        default=400, ge=1, description="the longest period a metrics or export call may ask for"
    )
    routeledger_statement_timeout_seconds: float = Field(
        default=30.0, gt=0, description="how long one query of a metrics call or page may run"
    )
    routeledger_export_timeout_seconds: float = Field(
        default=900.0, gt=0, description="how long an export's query may run while it streams"
    )
    routeledger_feedback_hold_days: int = Field(
        default=7, ge=1, description="how long feedback waits for a request not stored yet"
    )
    routeledger_feedback_hold_max: int = Field(
        default=10_000, ge=0, description="how much such feedback a project may have waiting"
    )
    routeledger_otlp_settle_seconds: float = Field(
        default=30.0,
        gt=0,
        description="a trace's request is assembled once no span of it arrived for this long",
    )
    routeledger_clock_offset_seconds: float = Field(
        default=0.0,
        description="moves the service's clock by this much (scripts/test-at runs the whole "
        "suite at a chosen instant with it); leave it 0",
    )
    routeledger_rollup_connections: int = Field(
        default=2, ge=1, description="connections the rollup job works on at once (a core each)"
    )

    @property
    def outbox_dir(self) -> Path:
        return self.routeledger_data_dir / "outbox"

    @property
    def embedded_pgdata_dir(self) -> Path:
        return self.routeledger_data_dir / "pgdata"

    @property
    def secret_key_file(self) -> Path:
        """Where `routeledger up` keeps the secret key it made."""
        return self.routeledger_data_dir / "secret_key"

    @property
    def logs_dir(self) -> Path:
        """Where `routeledger up` writes the logs of the processes it runs."""
        return self.routeledger_data_dir / "logs"


@lru_cache
def get_settings() -> Settings:
    return Settings()
