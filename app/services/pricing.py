"""The price catalog: prices with effective dates, from genai-prices and from projects.

Stored costs never change silently: a price applies from its `effective_from` on, a newer
catalog snapshot only adds prices from the moment it is loaded, and re-pricing old
requests is an explicit job with an audit record.
"""

from __future__ import annotations

import decimal
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from functools import lru_cache
from typing import Protocol

import genai_prices
from genai_prices import data_snapshot
from genai_prices import types as gp
from sqlalchemy import Connection, delete, func, insert, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from app.db import driver_cursor
from app.models import model_prices, price_catalog_snapshots
from app.periods import MAX_FUTURE, utc_now
from app.schemas import PriceIn

CATALOG_SOURCE = "genai-prices"
# The first snapshot prices all history: nothing older than this is expected.
CATALOG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
# Token counts up to 2**40 times prices with a dozen digits stay exact at this precision.
# Money is summed and multiplied at this precision everywhere, rounded only when shown.
MONEY_CONTEXT = decimal.Context(prec=50)


class TokenUsage(Protocol):
    """An attempt's token counts: an ingested attempt or a stored one."""

    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int


@dataclass(frozen=True)
class Tokens:
    """Token counts as given (a TokenUsage): the served tokens of some requests, say."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0

    def __add__(self, other: Tokens) -> Tokens:
        return Tokens(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cache_read_tokens + other.cache_read_tokens,
            self.cache_write_tokens + other.cache_write_tokens,
        )


@dataclass(frozen=True)
class Price:
    id: int
    project_id: int | None
    provider: str
    model: str
    input_per_mtok: Decimal
    output_per_mtok: Decimal
    cache_read_per_mtok: Decimal | None
    cache_write_per_mtok: Decimal | None
    effective_from: datetime
    # The four prices as integers of one scale (a missing cache price is the input price,
    # DESIGN.md, attempt cost), and that scale's exponent, per million tokens.
    _scaled: tuple[int, int, int, int] = field(init=False, repr=False, compare=False)
    _exponent: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        prices = (
            self.input_per_mtok,
            self.output_per_mtok,
            self.input_per_mtok if self.cache_read_per_mtok is None else self.cache_read_per_mtok,
            self.input_per_mtok if self.cache_write_per_mtok is None else self.cache_write_per_mtok,
        )
        exponent = min(0, *(price.as_tuple().exponent for price in prices))
        scaled = tuple(int(price.scaleb(-exponent, MONEY_CONTEXT)) for price in prices)
        object.__setattr__(self, "_scaled", scaled)
        object.__setattr__(self, "_exponent", exponent - 6)

    def cost(self, usage: TokenUsage) -> Decimal:
        """The cost of these tokens, in USD."""
        # Exact integer arithmetic, one Decimal at the end: the same result as summing the
        # Decimal products, in a third to a half of the time (ingest prices three per event).
        input_price, output_price, cache_read_price, cache_write_price = self._scaled
        total = usage.input_tokens * input_price + usage.output_tokens * output_price
        cache_read, cache_write = usage.cache_read_tokens, usage.cache_write_tokens
        if cache_read or cache_write:
            total += cache_read * cache_read_price + cache_write * cache_write_price
        if not total:
            return Decimal(0)
        return Decimal(total).scaleb(self._exponent, MONEY_CONTEXT).normalize(MONEY_CONTEXT)


# --- matching a model name to the catalog -------------------------------------------


@lru_cache(maxsize=4096)
def catalog_match(model: str, provider: str | None) -> tuple[str, str] | None:
    """genai-prices' own matching of a model name: (provider id, model id), or None. A
    provider that serves other providers' models (azure serves openai's) prices them as their
    own provider does, so the match names the provider whose catalog holds the model."""
    snapshot = data_snapshot.get_snapshot()
    try:
        found_provider, found_model = snapshot.find_provider_model(model, None, provider, None)
    except LookupError:
        return None
    if found_provider.find_model(model) is None:  # found among its fallback providers' models
        for fallback in found_provider.fallback_model_providers or ():
            owner = data_snapshot.find_provider_by_id(snapshot.providers, fallback)
            if owner is not None and owner.find_model(model) is found_model:
                return owner.id, found_model.id
    return found_provider.id, found_model.id


def normalize_provider(provider: str | None) -> str:
    return (provider or "").strip().lower()


CatalogMatch = Callable[[str, "str | None"], "tuple[str, str] | None"]


class PriceBook:
    """The prices of some models for one project, and the one rule that says which price a
    model call is charged at (`price_at`; README, "Which price applies")."""

    def __init__(self, rows: Iterable[Price], *, match: CatalogMatch = catalog_match):
        self._by_model: dict[str, list[Price]] = {}
        for row in rows:
            self._by_model.setdefault(row.model, []).append(row)
        self._match = match
        self._timelines: dict[tuple[str, str | None], tuple[list[Price], list[Price], str]] = {}

    @classmethod
    def load(
        cls, conn: Connection, *, project_id: int, models: Iterable[tuple[str, str | None]]
    ) -> PriceBook:
        """The project's own and the catalog's prices of these (model, provider) lookups."""
        names: set[str] = set()
        for model, provider in models:
            names.add(model)
            match = catalog_match(model, normalize_provider(provider) or None)
            if match:
                names.add(match[1])
        if not names:
            return cls([])
        # On every ingest call: psycopg's cursor (app.db.driver_cursor).
        with driver_cursor(conn) as cursor:
            cursor.execute(
                "select id, project_id, provider, model, input_per_mtok, output_per_mtok,"
                " cache_read_per_mtok, cache_write_per_mtok, effective_from from model_prices"
                " where (project_id = %s or project_id is null) and model = any(%s)",
                (project_id, sorted(names)),
            )
            rows = cursor.fetchall()
        return cls(
            # effective_from in UTC's own tzinfo: compared with an event's time per attempt,
            # a zoneinfo (as psycopg reads timestamptz) costs twenty times as much.
            Price(*row[:8], effective_from=row[8].astimezone(UTC))
            for row in rows
        )

    def price_at(self, model: str, provider: str | None, at: datetime) -> Price | None:
        """The price a call of `model` (at `provider`, when given) is charged at `at`:

        1. The project's own prices of this exact model name come first: those posted for
           the provider looked up or for no provider; with no provider looked up, those of
           every provider. The one in force at `at` applies (the latest effective_from not
           after `at`); at equal effective_from, a price of the provider looked up beats one
           for no provider, and with no provider looked up, a price for no provider beats
           the others, which go in alphabetical order of provider.
        2. Else the catalog's: the prices of this exact model name (of the provider looked
           up, when given), else those of the model the catalog's own matching finds for
           the name (`claude-3-5-haiku-20241022` -> `claude-3-5-haiku-latest`; `gpt-4o` at
           azure -> openai's, see `catalog_match`). With no
           provider looked up and the name priced at several providers, the catalog's
           matching picks the provider (else the first in alphabetical order). The price of
           that provider in force at `at` applies.
        3. Else the model is unpriced: None.
        """
        own, catalog, provider = self._candidates(model, provider)
        if own:
            in_force = [p for p in own if p.effective_from <= at]
            if in_force:
                return min(in_force, key=lambda p: _own_preference(p, provider))
        return _in_force(catalog, at)

    def cost_at(
        self, model: str, provider: str | None, at: datetime, usage: TokenUsage
    ) -> tuple[Decimal | None, int | None]:
        """The cost of `usage` at the price in force and that price's id; (None, None) when
        the model is unpriced."""
        price = self.price_at(model, provider, at)
        if price is None:
            return None, None
        return price.cost(usage), price.id

    def _candidates(self, model: str, provider: str | None) -> tuple[list[Price], list[Price], str]:
        """The project's prices that may apply, the catalog timeline that applies when none
        of them is in force (oldest first), and the provider as compared."""
        key = (model, provider)
        if key not in self._timelines:
            normal = normalize_provider(provider)
            exact = self._by_model.get(model, [])
            own = [
                p for p in exact if p.project_id is not None and p.provider in ("", normal)
            ] if normal else [p for p in exact if p.project_id is not None]  # fmt: skip
            self._timelines[key] = (own, self._catalog_timeline(model, normal), normal)
        return self._timelines[key]

    def _catalog_timeline(self, model: str, provider: str) -> list[Price]:
        catalog = [
            p
            for p in self._by_model.get(model, [])
            if p.project_id is None and (not provider or p.provider == provider)
        ]
        match = self._match(model, provider or None)
        if not catalog and match:
            catalog = [
                p
                for p in self._by_model.get(match[1], [])
                if p.project_id is None and p.provider == match[0]
            ]
        providers = {p.provider for p in catalog}
        if len(providers) > 1:
            chosen = match[0] if match and match[0] in providers else min(providers)
            catalog = [p for p in catalog if p.provider == chosen]
        return sorted(catalog, key=lambda p: p.effective_from)


def _own_preference(price: Price, provider: str) -> tuple:
    """Sort key of the project's prices in force: the first one applies."""
    if price.provider == provider:
        rank = 0
    elif price.provider == "":
        rank = 1
    else:
        rank = 2
    return (-price.effective_from.timestamp(), rank, price.provider)


def _in_force(timeline: list[Price], at: datetime) -> Price | None:
    chosen = None
    for price in timeline:
        if price.effective_from <= at:
            chosen = price
        else:
            break
    return chosen


# --- the catalog snapshot --------------------------------------------------------------


@dataclass(frozen=True)
class CatalogSync:
    version: str
    created: bool
    prices_added: int
    # Announced prices (in force from after the events' window) the new version changed or
    # no longer announces: nothing was priced with them yet.
    prices_revised: int = 0
    prices_withdrawn: int = 0


def _amount(value: Decimal | gp.TieredPrices | None) -> Decimal | None:
    # Long-context tiers are not modelled: the base price applies.
    if isinstance(value, gp.TieredPrices):
        return value.base
    return value


def _catalog_timeline(model: gp.ModelInfo) -> list[tuple[datetime, gp.ModelPrice]]:
    if isinstance(model.prices, gp.ModelPrice):
        return [(CATALOG_EPOCH, model.prices)]
    timeline = []
    for conditional in model.prices:
        constraint = conditional.constraint
        if constraint is None:
            timeline.append((CATALOG_EPOCH, conditional.prices))
        elif isinstance(constraint, gp.StartDateConstraint):
            start: date = constraint.start_date
            timeline.append(
                (datetime(start.year, start.month, start.day, tzinfo=UTC), conditional.prices)
            )
        # Time-of-day discounts are not modelled: the unconstrained price applies.
    return sorted(timeline, key=lambda item: item[0])


def catalog_rows() -> list[dict]:
    """Every token price of the installed genai-prices, as model_prices rows."""
    rows = []
    for provider in data_snapshot.get_snapshot().providers:
        for model in provider.models:
            for effective_from, price in _catalog_timeline(model):
                input_price = _amount(getattr(price, "input_mtok", None))
                output_price = _amount(getattr(price, "output_mtok", None))
                if input_price is None and output_price is None:
                    continue  # not priced per token (images, requests): nothing to apply
                rows.append(
                    {
                        "provider": provider.id,
                        "model": model.id,
                        "input_per_mtok": input_price or Decimal(0),
                        "output_per_mtok": output_price or Decimal(0),
                        "cache_read_per_mtok": _amount(getattr(price, "cache_read_mtok", None)),
                        "cache_write_per_mtok": _amount(getattr(price, "cache_write_mtok", None)),
                        "effective_from": effective_from,
                    }
                )
    return rows


def sync_catalog(conn: Connection, *, now: datetime | None = None) -> CatalogSync:
    """Loads the installed genai-prices version once. The first snapshot prices all history;
    a later one adds only what changed, in force from now, so no stored cost moves; prices it
    announces for later are added, and those a former version announced for after the
    events' window (MAX_FUTURE) are revised or withdrawn as it says."""
    now = now or utc_now()
    version = genai_prices.__version__
    conn.execute(text("select pg_advisory_xact_lock(hashtext('routeledger.catalog'))"))
    exists = conn.execute(
        select(price_catalog_snapshots.c.id).where(
            price_catalog_snapshots.c.source == CATALOG_SOURCE,
            price_catalog_snapshots.c.version == version,
        )
    ).first()
    if exists:
        return CatalogSync(version=version, created=False, prices_added=0)

    first = (
        conn.execute(select(func.count()).select_from(price_catalog_snapshots)).scalar_one() == 0
    )
    candidates = catalog_rows()
    changes = CatalogChanges(candidates)
    if not first:
        changes = _changes_since_last_snapshot(conn, candidates, now=now)
        candidates = changes.added
    snapshot_id = conn.execute(
        insert(price_catalog_snapshots)
        .values(
            source=CATALOG_SOURCE,
            version=version,
            took_effect_at=CATALOG_EPOCH if first else now,
            models=len({(r["provider"], r["model"]) for r in candidates}),
        )
        .returning(price_catalog_snapshots.c.id)
    ).scalar_one()
    source = f"{CATALOG_SOURCE} {version}"
    if candidates:
        conn.execute(
            insert(model_prices),
            [
                {**row, "project_id": None, "source": source, "snapshot_id": snapshot_id}
                for row in candidates
            ],
        )
        # Statistics now, not when autovacuum gets to it: until then the planner reads every
        # catalog row for a price book (a bitmap scan of the unique index whose third column
        # is the model) instead of looking the models up, at four times the cost per call.
        conn.execute(text("analyze model_prices"))
    for price_id, row in changes.revised:
        conn.execute(
            update(model_prices)
            .where(model_prices.c.id == price_id)
            .values(**{f: row[f] for f in _PRICE_FIELDS}, source=source, snapshot_id=snapshot_id)
        )
    if changes.withdrawn:
        conn.execute(delete(model_prices).where(model_prices.c.id.in_(changes.withdrawn)))
    return CatalogSync(
        version=version,
        created=True,
        prices_added=len(candidates),
        prices_revised=len(changes.revised),
        prices_withdrawn=len(changes.withdrawn),
    )


_PRICE_FIELDS = ("input_per_mtok", "output_per_mtok", "cache_read_per_mtok", "cache_write_per_mtok")


def _price_changed(stored, row: dict) -> bool:
    """Whether a catalog row's prices differ from a stored price's."""
    return any(getattr(stored, name) != row[name] for name in _PRICE_FIELDS)


@dataclass
class CatalogChanges:
    """What a newer catalog version changes: rows to add, announced prices to revise (by id,
    with the new row) and to withdraw (ids)."""

    added: list[dict]
    revised: list[tuple[int, dict]] = field(default_factory=list)
    withdrawn: list[int] = field(default_factory=list)


def _changes_since_last_snapshot(
    conn: Connection, candidates: list[dict], *, now: datetime
) -> CatalogChanges:
    stored = conn.execute(
        select(model_prices)
        .where(model_prices.c.project_id.is_(None))
        .order_by(model_prices.c.effective_from)
    )
    timelines: dict[tuple[str, str], list] = {}
    for row in stored:
        timelines.setdefault((row.provider, row.model), []).append(row)
    changes = CatalogChanges([])
    # Announced prices no event can have been priced with yet (events are at most MAX_FUTURE
    # ahead): the new version's word on them replaces the former's.
    unused_after = now + MAX_FUTURE
    in_force_now: dict[tuple[str, str], dict] = {}
    announced = set()
    new_keys = {(r["provider"], r["model"]) for r in candidates} - timelines.keys()
    for key, family in _matched_families(conn, new_keys=new_keys).items():
        # A name priced so far at another entry's prices keeps that history under its own
        # name: the new entry's price is a change, in force from now like any other.
        history = [old for old in timelines[family] if old.effective_from < now]
        if not history:
            continue
        changes.added += [
            {**{f: getattr(old, f) for f in _PRICE_FIELDS}, "provider": key[0], "model": key[1],
             "effective_from": old.effective_from}
            for old in history
        ]  # fmt: skip
        timelines[key] = history
    for row in candidates:
        key = (row["provider"], row["model"])
        if key not in timelines:
            changes.added.append(row)  # a model new to the catalog: nothing was priced with it
        elif row["effective_from"] > now:
            announced.add((*key, row["effective_from"]))
            same = [old for old in timelines[key] if old.effective_from == row["effective_from"]]
            if not same:
                changes.added.append(row)  # a price announced for later
            elif row["effective_from"] > unused_after and _price_changed(same[0], row):
                changes.revised.append((same[0].id, row))
        elif (
            key not in in_force_now or row["effective_from"] >= in_force_now[key]["effective_from"]
        ):
            in_force_now[key] = row
    for key, row in in_force_now.items():
        current = [old for old in timelines[key] if old.effective_from <= now][-1:]
        if not current or _price_changed(current[0], row):
            changes.added.append({**row, "effective_from": now})
    changes.withdrawn = [
        old.id
        for (provider, model), timeline in timelines.items()
        for old in timeline
        if old.effective_from > unused_after
        and (provider, model, old.effective_from) not in announced
    ]
    return changes


def _matched_families(
    conn: Connection, *, new_keys: set[tuple[str, str]]
) -> dict[tuple[str, str], tuple[str, str]]:
    """Per (provider, model) new to the catalog whose model name stored costs were priced
    at with a catalog price all the same (through the catalog's matching: a dated name at
    its family's price, a name at another provider's), for calls at that provider or at
    none, the catalog entry that priced them. Read once per new catalog version: the
    attempts and baselines of the names the rollups show were called (most new entries
    are of models nobody called yet, whose attempts need no reading)."""
    called = list(
        conn.scalars(
            text(
                "select model from rollup_routing_models_hourly where model = any(:names) "
                "union select model from rollup_routing_models_daily where model = any(:names) "
                "union select baseline_model from projects where baseline_model = any(:names)"
            ),
            {"names": sorted({model for _, model in new_keys})},
        )
    )
    if not called:
        return {}
    priced = conn.execute(
        text(
            "select distinct a.model, coalesce(a.provider, ''), p.provider, p.model "
            "from attempts a join model_prices p on p.id = a.price_id "
            "where p.project_id is null and a.model = any(:names) "
            "union "
            "select distinct j.baseline_model, coalesce(j.baseline_provider, ''), p.provider, "
            "p.model from projects j join requests r on r.project_id = j.id "
            "join model_prices p on p.id = r.baseline_price_id "
            "where p.project_id is null and j.baseline_model = any(:names)"
        ),
        {"names": sorted(called)},
    ).all()
    families: dict[tuple[str, str], tuple[str, str]] = {}
    for provider, model in sorted(new_keys):
        found = sorted(
            (family_provider, family)
            for name, called_at, family_provider, family in priced
            if name == model and normalize_provider(called_at) in ("", provider)
        )
        if found:
            families[(provider, model)] = next((e for e in found if e[0] == provider), found[0])
    return families


def catalog_version(conn: Connection) -> str | None:
    return conn.execute(
        select(price_catalog_snapshots.c.version)
        .where(price_catalog_snapshots.c.source == CATALOG_SOURCE)
        .order_by(price_catalog_snapshots.c.id.desc())
        .limit(1)
    ).scalar()


class DuplicatePrice(ValueError):
    """The project has a price of this model and provider from this instant already."""


def add_prices(conn: Connection, *, project_id: int, prices: Iterable[PriceIn]) -> list[int]:
    """A project's own prices; each overrides the catalog from its effective_from on. A price
    never replaces another (stored costs were computed with it): the same model, provider
    and effective_from again is a DuplicatePrice, and nothing of the call is stored."""
    ids = []
    for index, price in enumerate(prices):
        ids.append(
            conn.execute(
                pg_insert(model_prices)
                .values(
                    project_id=project_id,
                    provider=normalize_provider(price.provider),
                    model=price.model,
                    input_per_mtok=price.input_per_mtok,
                    output_per_mtok=price.output_per_mtok,
                    cache_read_per_mtok=price.cache_read_per_mtok,
                    cache_write_per_mtok=price.cache_write_per_mtok,
                    effective_from=price.effective_from,
                    source="custom",
                )
                .on_conflict_do_nothing()
                .returning(model_prices.c.id)
            ).scalar()
        )
        if ids[-1] is None:
            raise DuplicatePrice(
                f"prices[{index}]: {price.model!r} ({price.provider or 'any provider'}) has a "
                f"price from {price.effective_from.isoformat()} already; post one with another "
                "effective_from"
            )
    return ids


def list_prices(
    conn: Connection, *, project_id: int, model: str | None = None, include_catalog: bool = True
) -> list[dict]:
    scope = model_prices.c.project_id == project_id
    if include_catalog:
        scope = or_(scope, model_prices.c.project_id.is_(None))
    query = select(model_prices).where(scope)
    if model:
        query = query.where(model_prices.c.model == model)
    query = query.order_by(
        model_prices.c.project_id.is_(None),
        model_prices.c.provider,
        model_prices.c.model,
        model_prices.c.effective_from,
    )
    return [dict(row._mapping) for row in conn.execute(query)]
