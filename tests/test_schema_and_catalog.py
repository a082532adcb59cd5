"""Migrations from empty to head and back; the genai-prices catalog snapshot; partitions."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import psycopg
import pytest
from sqlalchemy import create_engine, text

from app.services import pricing
from tests.helpers import ADMIN_URL, batch, event, post, with_database


@pytest.fixture
def scratch_database(database_url):
    """An empty database of its own; the session's DATABASE_URL is restored afterwards."""
    import os

    from app.db import get_engine
    from app.settings import get_settings

    name = f"routeledger_scratch_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'create database "{name}"')
    url = with_database(ADMIN_URL, name)
    os.environ["DATABASE_URL"] = url
    get_settings.cache_clear()
    try:
        yield url
    finally:
        get_engine().dispose()
        os.environ["DATABASE_URL"] = database_url
        get_settings.cache_clear()
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'drop database if exists "{name}" with (force)')


def _tables(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "select tablename from pg_tables where schemaname = 'public' "
            "union select relname from pg_class where relkind = 'p'"
        )
        return {r[0] for r in rows}


def _schema_differences(url: str) -> list:
    """What Alembic's autogenerate would change to make the database match app.models."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlalchemy import create_engine

    from app.models import metadata

    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as conn:
            return compare_metadata(MigrationContext.configure(conn), metadata)
    finally:
        engine.dispose()


def test_upgrade_to_head_and_downgrade_to_base(scratch_database):
    from app import migrate
    from app.services.partitions import forget_known_partitions

    migrate.upgrade()
    assert {
        "projects",
        "requests",
        "attempts",
        "model_prices",
        "request_keys",
        "policies",
    } <= _tables(scratch_database)
    with psycopg.connect(scratch_database) as conn:
        unnamed = conn.execute(
            "select conname from pg_constraint c join pg_namespace n on n.oid = c.connamespace "
            "where n.nspname = 'public' and conname !~ '^(pk|fk|uq|ck)_' "
            "and conname <> 'alembic_version_pkc'"
        ).fetchall()
    assert unnamed == []  # every constraint follows the naming convention
    assert _schema_differences(scratch_database) == []  # app.models describes the migrations
    migrate.downgrade("base")
    assert _tables(scratch_database) <= {"alembic_version"}
    migrate.upgrade()
    forget_known_partitions()
    assert "requests" in _tables(scratch_database)


def test_upgrade_copies_each_requests_keys_onto_its_stored_attempts(scratch_database):
    from app import migrate
    from app.services.partitions import forget_known_partitions

    migrate.upgrade("0005")
    forget_known_partitions()
    ts = datetime(2026, 11, 3, 9, 30, tzinfo=UTC)
    keyed = {uuid.uuid4(): ("chat", "acme", "router-v4", "treatment"),
             uuid.uuid4(): ("search", "globex", None, None)}  # fmt: skip
    with psycopg.connect(scratch_database) as conn:
        for table in ("requests", "attempts"):
            conn.execute(
                f"create table {table}_p2026_11 partition of {table} "
                "for values from ('2026-11-01 00:00Z') to ('2026-12-01 00:00Z')"
            )
        for request_id, (feature, customer, experiment, arm) in keyed.items():
            conn.execute(
                "insert into requests (project_id, ts, request_id, received_at, customer_id, "
                "feature, intended_tier, attempt_count, is_fallback, is_escalation, "
                "is_failover, is_failed, input_tokens, output_tokens, cache_read_tokens, "
                "cache_write_tokens, cost_usd, unpriced_attempts, is_unpriced, "
                "experiment_name, experiment_arm) values (1, %s, %s, %s, %s, %s, 'cheap', 2, "
                "true, false, false, false, 10, 20, 0, 0, 0, 0, false, %s, %s)",
                (ts, request_id, ts, customer, feature, experiment, arm),
            )
            for position in (0, 1):
                conn.execute(
                    "insert into attempts (project_id, ts, request_id, position, model, tier, "
                    "status, input_tokens, output_tokens, cache_read_tokens, "
                    "cache_write_tokens) values (1, %s, %s, %s, 'm', 'cheap', 'ok', 5, 10, 0, 0)",
                    (ts, request_id, position),
                )
    migrate.upgrade()
    with psycopg.connect(scratch_database) as conn:
        copied = conn.execute(
            "select request_id, feature, customer_id, experiment_name, experiment_arm "
            "from attempts order by request_id, position"
        ).fetchall()
    assert sorted(copied) == sorted(
        (request_id, *keys) for request_id, keys in keyed.items() for _ in (0, 1)
    )


def test_catalog_snapshot_is_loaded_once_and_later_versions_change_only_the_future(
    scratch_database, monkeypatch
):
    from app import migrate

    migrate.upgrade()
    engine = create_engine(scratch_database.replace("postgresql://", "postgresql+psycopg://"))
    with engine.begin() as conn:
        first = pricing.sync_catalog(conn)
        again = pricing.sync_catalog(conn)
    assert first.created and first.prices_added > 1000
    assert not again.created
    with engine.begin() as conn:
        (took_effect,) = conn.execute(
            text("select took_effect_at from price_catalog_snapshots")
        ).one()
        assert took_effect == pricing.CATALOG_EPOCH

    # A newer package version with one changed price and one new model.
    rows = pricing.catalog_rows()
    changed = next(r for r in rows if r["model"] == "gpt-4o" and r["provider"] == "openai")
    changed_rows = [
        {**r, "input_per_mtok": r["input_per_mtok"] * 2} if r is changed else r for r in rows
    ] + [{**changed, "model": "brand-new-model"}]
    monkeypatch.setattr(pricing, "catalog_rows", lambda: changed_rows)
    monkeypatch.setattr(pricing.genai_prices, "__version__", "99.0.0")
    now = datetime(2026, 11, 22, 12, tzinfo=UTC)
    with engine.begin() as conn:
        upgrade = pricing.sync_catalog(conn, now=now)
        added = conn.execute(
            text(
                "select model, effective_from from model_prices p join price_catalog_snapshots s "
                "on s.id = p.snapshot_id where s.version = '99.0.0' order by model"
            )
        ).all()
    assert upgrade.created and upgrade.prices_added == 2
    assert [(m, e == now) for m, e in added] == [("brand-new-model", False), ("gpt-4o", True)]
    with engine.connect() as conn:
        book = pricing.PriceBook.load(conn, project_id=0, models=[("gpt-4o", "openai")])
    before = book.price_at("gpt-4o", "openai", now - timedelta(seconds=1))
    after = book.price_at("gpt-4o", "openai", now)
    assert after.input_per_mtok == 2 * before.input_per_mtok
    engine.dispose()


def test_a_new_catalog_entry_for_a_name_priced_by_matching_changes_its_price_from_then(
    scratch_database, monkeypatch
):
    """A dated name was priced at its family's price (the catalog's matching); a newer catalog
    version gives it an entry of its own: calls before the version keep the family's price
    (a late event, a re-pricing of those days), calls after it take the new one. A name
    nothing was priced with is priced by its new entry for all history."""
    from app import migrate
    from app.services.batches import Batch
    from app.services.ingest import ingest_batch
    from app.services.partitions import forget_known_partitions
    from app.services.projects import create_project
    from app.services.rollups import run_rollup
    from tests.helpers import attempt

    migrate.upgrade()
    engine = create_engine(scratch_database.replace("postgresql://", "postgresql+psycopg://"))
    now = datetime(2026, 11, 22, 12, tzinfo=UTC)
    dated = "gpt-4o-2024-08-06"  # no entry of its own: matched to gpt-4o
    with engine.begin() as conn:
        pricing.sync_catalog(conn, now=now - timedelta(days=30))
        project_id, _ = create_project(conn, name="p", baseline_model="gpt-4o")
    call = attempt(model=dated, provider="openai")
    # The partitions known to this process are the session database's: not this one's.
    forget_known_partitions()
    try:
        stored = ingest_batch(
            engine, project_id=project_id,
            batch=Batch([event(call, timestamp=(now - timedelta(days=2)).isoformat())]), now=now,
        )  # fmt: skip
    finally:
        forget_known_partitions()
    assert stored.accepted == 1
    run_rollup(engine, now=now)  # the rollups say which names were called

    def price(model: str, at: datetime, provider: str = "openai") -> Decimal | None:
        with engine.connect() as conn:
            book = pricing.PriceBook.load(conn, project_id=project_id, models=[(model, provider)])
        found = book.price_at(model, provider, at)
        return None if found is None else found.input_per_mtok

    family = price(dated, now - timedelta(days=1))
    rows = pricing.catalog_rows()
    gpt_4o = next(r for r in rows if r["model"] == "gpt-4o" and r["provider"] == "openai")
    own = {**gpt_4o, "input_per_mtok": Decimal("9"), "output_per_mtok": Decimal("9")}
    newer = [
        *rows, {**own, "model": dated}, {**own, "model": "never-priced-model"},
        {**own, "provider": "azure", "model": dated},  # never called at azure
    ]  # fmt: skip
    monkeypatch.setattr(pricing, "catalog_rows", lambda: newer)
    monkeypatch.setattr(pricing.genai_prices, "__version__", "99.0.0")
    with engine.begin() as conn:
        pricing.sync_catalog(conn, now=now)
    assert family == gpt_4o["input_per_mtok"]
    assert price(dated, now - timedelta(days=1)) == family
    assert price(dated, datetime(2025, 1, 1, tzinfo=UTC)) == family
    assert price(dated, now) == 9
    assert price("never-priced-model", datetime(2025, 1, 1, tzinfo=UTC)) == 9
    assert price(dated, datetime(2025, 1, 1, tzinfo=UTC), provider="azure") == 9
    engine.dispose()


def test_a_later_catalog_version_revises_or_withdraws_prices_it_announced(
    scratch_database, monkeypatch
):
    """A price announced for later has priced nothing yet: a newer version that changes it,
    or no longer announces it, is taken at its word (unlike a price in force, which stays)."""
    from app import migrate

    migrate.upgrade()
    engine = create_engine(scratch_database.replace("postgresql://", "postgresql+psycopg://"))
    now = datetime(2026, 11, 22, 12, tzinfo=UTC)
    later, tomorrow = datetime(2027, 6, 1, tzinfo=UTC), now + timedelta(hours=12)

    def version(name: str, *prices: tuple[str, datetime, str]) -> pricing.CatalogSync:
        rows = [
            {"provider": "acme", "model": model, "input_per_mtok": Decimal(price),
             "output_per_mtok": Decimal(price), "cache_read_per_mtok": None,
             "cache_write_per_mtok": None, "effective_from": since}
            for model, since, price in prices
        ]  # fmt: skip
        monkeypatch.setattr(pricing, "catalog_rows", lambda: rows)
        monkeypatch.setattr(pricing.genai_prices, "__version__", name)
        with engine.begin() as conn:
            return pricing.sync_catalog(conn, now=now)

    epoch = pricing.CATALOG_EPOCH
    version("1", ("m", epoch, "1"), ("m", later, "2"), ("m", tomorrow, "2"), ("gone", later, "5"))
    sync = version("2", ("m", epoch, "1"), ("m", later, "3"), ("m", tomorrow, "4"))
    assert (sync.prices_added, sync.prices_revised, sync.prices_withdrawn) == (0, 1, 1)
    with engine.connect() as conn:
        stored = conn.execute(
            text("select model, effective_from, input_per_mtok from model_prices order by 1, 2")
        ).all()
    # Within the events' window, tomorrow's price may have priced an event already: it stays.
    assert [tuple(row) for row in stored] == [
        ("m", epoch, 1), ("m", tomorrow, 2), ("m", later, 3)
    ]  # fmt: skip
    engine.dispose()


def test_catalog_lookup_exact_then_matching_then_provider(engine):
    with engine.connect() as conn:
        book = pricing.PriceBook.load(
            conn,
            project_id=0,
            models=[
                ("gpt-4-1106-preview", None),
                ("mistralai/Mixtral-8x7B-Instruct-v0.1", None),
                ("claude-opus-4-6", "google"),
                ("claude-opus-4-6", None),
                ("claude-3-5-haiku-20241022", "anthropic"),
            ],
        )
    now = datetime(2026, 11, 22, tzinfo=UTC)
    gpt4 = book.price_at("gpt-4-1106-preview", None, now)
    # The exact name is in the catalog (at a reseller), so it wins over fuzzy matching.
    assert (gpt4.model, str(gpt4.input_per_mtok), str(gpt4.output_per_mtok)) == (
        "gpt-4-1106-preview",
        "10",
        "30",
    )
    mixtral = book.price_at("mistralai/Mixtral-8x7B-Instruct-v0.1", None, now)
    assert mixtral.model == "mistralai/Mixtral-8x7B-Instruct-v0.1"  # exact name in the catalog
    assert book.price_at("claude-opus-4-6", "google", now).provider == "google"
    assert book.price_at("claude-opus-4-6", None, now).provider == "anthropic"
    matched = book.price_at("claude-3-5-haiku-20241022", "anthropic", now)
    assert (matched.provider, matched.model) == ("anthropic", "claude-3-5-haiku-latest")
    assert book.price_at("no-such-model-anywhere", None, now) is None


def test_a_provider_serving_another_providers_models_is_priced_as_that_provider(engine):
    """genai-prices prices azure's gpt-4o as openai's (azure falls back to openai's models)."""
    calls = [("gpt-4o", "azure"), ("gpt-4o", "openai"), ("gpt-4o-mini", "azure"),
             ("gpt-4o-mini", "openai")]  # fmt: skip
    with engine.connect() as conn:
        book = pricing.PriceBook.load(conn, project_id=0, models=calls)
    now = datetime(2026, 11, 22, tzinfo=UTC)
    for model in ("gpt-4o", "gpt-4o-mini"):
        at_azure, at_openai = (
            book.price_at(model, "azure", now),
            book.price_at(model, "openai", now),
        )
        assert at_azure is not None and at_azure == at_openai


def test_requests_land_in_monthly_partitions(http, fresh_project, database_url):

    old = event(timestamp="2024-02-29T23:59:59.999Z")
    post(http, fresh_project.ingest_key, batch(old))
    with psycopg.connect(database_url) as conn:
        table = conn.execute(
            "select tableoid::regclass::text from requests where request_id = %s",
            (old["request_id"],),
        ).fetchone()[0]
    assert table == "requests_p2024_02"


def test_a_database_behind_or_ahead_of_the_code_is_said_so(scratch_database):
    """The code upgraded and the database not (or the other way round): the API answers 503
    naming `routeledger migrate` rather than a 500, the command line says it in one line."""
    import httpx

    from app import migrate
    from app.db import get_engine
    from app.services.health import database_status
    from tests.helpers import LiveApi, auth, make_project, routeledger

    migrate.upgrade()
    project = make_project()
    migrate.downgrade("0018")  # revenue records without their record_id
    api = LiveApi(database_url=scratch_database)
    api.ready_path = "/healthz"  # /readyz is a 503 here, rightly
    try:
        api.start()
        record = {"customer_id": "acme", "period_start": "2026-11-01T00:00:00Z",
                  "period_end": "2026-12-01T00:00:00Z", "amount_usd": "1"}  # fmt: skip
        answer = httpx.post(
            f"{api.url}/v1/revenue", json={"records": [record]},
            headers=auth(project.admin_key), timeout=30,
        )  # fmt: skip
    finally:
        api.stop()
    assert answer.status_code == 503 and answer.headers["Retry-After"]
    assert "run `routeledger migrate`" in answer.json()["detail"]

    migrate.downgrade("base")
    bare = routeledger("project", "create", "x", env={"DATABASE_URL": scratch_database})
    assert bare.returncode == 1 and "Traceback" not in bare.stderr
    assert "database is not migrated: run `routeledger migrate`" in bare.stderr

    migrate.upgrade()
    with get_engine().begin() as conn:
        conn.execute(text("update alembic_version set version_num = '9999'"))
        assert "newer than this code knows" in database_status(conn)
    ahead = routeledger("migrate", env={"DATABASE_URL": scratch_database})
    assert ahead.returncode == 1 and "Traceback" not in ahead.stderr
    assert "migrated by a newer RouteLedger" in ahead.stderr
