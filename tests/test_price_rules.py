"""Which price applies (README, "Which price applies"; PriceBook.price_at): for random price
tables and lookups, the price chosen equals a brute-force reference written here from the
rules; and the defect it fixes, end to end: a project's own price posted with a provider
prices calls and the baseline looked up without one."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal, localcontext

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.schemas import PriceIn
from app.services.ingest import Batch, ingest_batch
from app.services.pricing import Price, PriceBook, Tokens, add_prices
from tests.helpers import attempt, event, make_project

PROJECT = 7
INSTANTS = [datetime(2026, 1, 1, tzinfo=UTC) + timedelta(days=30 * i) for i in range(4)]
MODELS = ("m1", "m2", "m1-2026-01-01")
PROVIDERS = ("acme", "beta", "gamma")


def fake_match(model: str, provider: str | None) -> tuple[str, str] | None:
    """A catalog matcher: a dated name finds its family at acme; m2 is beta's by choice."""
    if model == "m1-2026-01-01" and provider in (None, "acme"):
        return "acme", "m1"
    if model == "m2" and provider is None:
        return "beta", "m2"
    return None


# Catalog rows always name a provider; the project's may not.
OWNERS = [(PROJECT, p) for p in ("", *PROVIDERS)] + [(None, p) for p in PROVIDERS]
rows_st = st.lists(
    st.tuples(st.sampled_from(OWNERS), st.sampled_from(MODELS), st.sampled_from(INSTANTS)),
    max_size=14,
    unique=True,  # the table's unique key: project, provider, model, effective_from
).map(
    lambda keys: [
        Price(
            id=i,
            project_id=project,
            provider=provider,
            model=model,
            input_per_mtok=Decimal(i + 1),
            output_per_mtok=Decimal(1),
            cache_read_per_mtok=None,
            cache_write_per_mtok=None,
            effective_from=at,
        )
        for i, ((project, provider), model, at) in enumerate(keys)
    ]  # fmt: skip
)
lookups_st = st.lists(
    st.tuples(
        st.sampled_from((*MODELS, "m3")),
        st.sampled_from((None, "", "ACME ", *PROVIDERS)),
        st.sampled_from([*INSTANTS, INSTANTS[0] - timedelta(days=1), INSTANTS[1] + timedelta(1)]),
    ),
    min_size=1,
    max_size=10,
)


def reference(rows: list[Price], model: str, provider: str | None, at: datetime):
    """The rules, one by one, over every row."""
    provider = (provider or "").strip().lower()
    # 1. The project's own prices of the exact name, for this provider or none (any, when
    #    none is looked up), in force at `at`: the latest; at a tie, this provider's, then no
    #    provider's, then by provider name.
    own = [
        p
        for p in rows
        if p.project_id is not None
        and p.model == model
        and (not provider or p.provider in (provider, ""))
        and p.effective_from <= at
    ]
    if own:
        latest = max(p.effective_from for p in own)
        tied = [p for p in own if p.effective_from == latest]
        for preferred in (provider, ""):
            if any(p.provider == preferred for p in tied):
                return next(p for p in tied if p.provider == preferred)
        return min(tied, key=lambda p: p.provider)
    # 2. The catalog: the exact name (at this provider, when given), else the matched model;
    #    several providers and none given: the matcher's, else the first by name.
    match = fake_match(model, provider or None)
    catalog = [
        p
        for p in rows
        if p.project_id is None and p.model == model and (not provider or p.provider == provider)
    ]
    if not catalog and match:
        catalog = [p for p in rows if p.project_id is None and (p.provider, p.model) == match]
    providers = sorted({p.provider for p in catalog})
    if len(providers) > 1:
        chosen = match[0] if match and match[0] in providers else providers[0]
        catalog = [p for p in catalog if p.provider == chosen]
    in_force = [p for p in catalog if p.effective_from <= at]
    # 3. Unpriced.
    return max(in_force, key=lambda p: p.effective_from) if in_force else None


@settings(max_examples=400, deadline=None)
@given(rows=rows_st, lookups=lookups_st)
def test_the_price_chosen_equals_the_rules_applied_by_hand(rows, lookups):
    book = PriceBook(rows, match=fake_match)
    for model, provider, at in lookups:
        assert book.price_at(model, provider, at) == reference(rows, model, provider, at), (
            model,
            provider,
            at,
        )


# Prices as posted: decimal strings with up to a dozen places, or in exponent form.
price_st = st.decimals(min_value=0, max_value=10**6, places=12, allow_nan=False) | st.sampled_from(
    [Decimal("0"), Decimal("0.00"), Decimal("1E+2"), Decimal("2.50"), Decimal("0.000001")]
)
tokens_st = st.integers(min_value=0, max_value=2**40)


@settings(max_examples=400, deadline=None)
@given(
    prices=st.tuples(price_st, price_st, st.none() | price_st, st.none() | price_st),
    tokens=st.tuples(tokens_st, tokens_st, tokens_st, tokens_st),
)
def test_a_cost_is_the_tokens_times_the_prices_exactly(prices, tokens):
    """DESIGN.md's attempt cost, worked out here in Decimal with room to spare, equals the
    cost a price computes, to the last digit and in the same form."""
    input_price, output_price, cache_read_price, cache_write_price = prices
    price = Price(1, None, "acme", "m1", *prices, effective_from=INSTANTS[0])
    with localcontext(prec=200):  # every digit kept
        expected = (
            tokens[0] * input_price
            + tokens[1] * output_price
            + tokens[2] * (input_price if cache_read_price is None else cache_read_price)
            + tokens[3] * (input_price if cache_write_price is None else cache_write_price)
        ) / 1_000_000
        expected = expected.normalize() if expected else Decimal(0)
    cost = price.cost(Tokens(*tokens))
    assert (cost, str(cost)) == (expected, str(expected))


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    own=st.lists(
        st.tuples(
            st.sampled_from(("", *PROVIDERS)),
            st.sampled_from(MODELS[:2]),
            st.sampled_from(INSTANTS),
        ),
        min_size=1,
        max_size=8,
        unique=True,
    ),  # fmt: skip
    lookups=lookups_st,
)
def test_prices_loaded_from_the_database_choose_the_same(engine, own, lookups):
    """The project's prices as stored and loaded for the lookups (names the catalog does
    not know, so only the project's rows can apply)."""
    prefix = f"rl-{uuid.uuid4().hex[:8]}-"
    project = make_project()
    with engine.begin() as conn:
        ids = add_prices(
            conn,
            project_id=project.id,
            prices=[
                PriceIn(
                    model=prefix + model,
                    provider=provider or None,
                    input_per_mtok=i + 1,
                    output_per_mtok=1,
                    effective_from=at.isoformat(),
                )
                for i, (provider, model, at) in enumerate(own)
            ],  # fmt: skip
        )
        wanted = [(prefix + model, provider) for model, provider, _ in lookups]
        book = PriceBook.load(conn, project_id=project.id, models=wanted)
    rows = [
        Price(id=id_, project_id=project.id, provider=provider, model=prefix + model,
              input_per_mtok=Decimal(i + 1), output_per_mtok=Decimal(1),
              cache_read_per_mtok=None, cache_write_per_mtok=None, effective_from=at)
        for i, (id_, (provider, model, at)) in enumerate(zip(ids, own, strict=True))
    ]  # fmt: skip
    for model, provider, at in lookups:
        found = book.price_at(prefix + model, provider, at)
        expected = reference(rows, prefix + model, provider, at)
        assert (found and found.id) == (expected and expected.id)


@pytest.mark.parametrize("sent_provider", [None, "acme"])
def test_a_price_posted_with_a_provider_prices_calls_and_the_baseline_without_one(
    engine, sent_provider
):
    """The defect: the project's price posted with a provider was not found by a lookup
    without one, so the baseline (set with no provider) had no cost and savings were unknown,
    and an attempt sent without a provider was unpriced."""
    name = f"house-model-{uuid.uuid4().hex[:8]}"
    project = make_project(baseline_model=name)
    with engine.begin() as conn:
        add_prices(
            conn,
            project_id=project.id,
            prices=[PriceIn(model=name, provider="acme", input_per_mtok="2",
                            output_per_mtok="4", effective_from="2026-01-01T00:00:00Z")],
        )  # fmt: skip
    sent = event(
        attempt(model=name, provider=sent_provider, input_tokens=1000, output_tokens=500),
        timestamp="2026-03-01T12:00:00Z",
    )
    result = ingest_batch(
        engine, project_id=project.id, batch=Batch([sent]), now=datetime(2026, 3, 2, tzinfo=UTC)
    )
    assert result.accepted == 1
    with engine.connect() as conn:
        row = conn.exec_driver_sql(
            "select cost_usd, is_unpriced, baseline_cost_usd from requests where project_id = %s",
            (project.id,),
        ).one()
    assert row.is_unpriced is False
    assert row.cost_usd == Decimal("0.004")  # 1000 × $2 + 500 × $4, per million
    assert row.baseline_cost_usd == Decimal("0.004")
