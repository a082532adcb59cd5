"""Routing advice (DESIGN.md, Routing advice): for each segment (feature, task type) of a
project, each tier's pass rate relative to the reference tier with a 95% interval, the cases
behind it and what the segment would cost at that tier's model; the cheapest tier that meets
the segment's quality floor; and what-ifs of a candidate split over real traffic.

Evidence of a segment is offline when it has evaluation results (tiers compared on the same
items), else online (the scores of the requests each tier served, which routing chose, so
they compare different requests). Online, a tier's evidence is every scored request it
served, whatever the model; offline, the tier's model with the most results speaks for it
(the models compared on the same items). Either way, that model (online: the one that
served most of them) is the one a tier is priced at. Intervals (app.services.intervals):
offline, the relative pass rate is the share of the reference's passed items the tier
passed too, a proportion, with its Wilson interval; online, it is a ratio of two
independent pass rates, with the MOVER-R Wilson interval.

Costs come from the flow rollup (app.services.rollups.FLOW): a segment's served tokens over
the traffic window (the 30 days before the period's end), priced at a tier's model with the
prices in force at the end, or now when the end is later (PriceBook.price_at). Scores come
from the quality rollup, whole hours and days, so nothing here reads raw requests but the
minutes at a period's edge.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

from sqlalchemy import Connection, text

from app.db import planner_settings
from app.periods import Period, hourly_period, trailing, utc_now
from app.schemas import WhatIfIn
from app.services.intervals import (
    NONE,
    Estimate,
    ratio_interval,
    weighted_sum_interval,
    wilson_interval,
)
from app.services.metrics import MONEY_CONTEXT, Filters, coverage
from app.services.policies import InvalidPolicy, validate_split
from app.services.pricing import PriceBook, Tokens
from app.services.projects import project_tiers
from app.services.quality_floors import FloorBook, QualityFloor, load_floors
from app.services.rollups import FLOW, QUALITY, RollupTable
from app.vocabulary import EVIDENCE_SOURCES

TRAFFIC_WINDOW = timedelta(days=30)
MIN_CASES = 30
INSUFFICIENT_EVIDENCE = "insufficient_evidence"
ONLINE, OFFLINE = EVIDENCE_SOURCES


class NoTraffic(LookupError):
    """The feature has neither traffic nor evidence to advise on."""


class InvalidCandidate(ValueError):
    """A what-if that names an unknown tier, shares that do not sum to 1, or a tier with no
    model to price; the message names the field."""


Segment = tuple[str, str | None]  # (feature, task type)


# --- evidence --------------------------------------------------------------------------------


@dataclass(frozen=True)
class TierEvidence:
    """One tier's evidence in a segment: its model and how many of its cases passed."""

    tier: str
    rank: int
    model: str
    provider: str | None
    cases: int
    passed: int

    @property
    def pass_rate(self) -> Estimate:
        return wilson_interval(self.passed, self.cases)


@dataclass(frozen=True)
class Paired:
    """Two tiers' results on the items both were scored on (offline)."""

    items: int
    passed_first: int
    passed_second: int
    passed_both: int

    def correlation(self) -> float:
        """The phi coefficient of the two tiers' pass/fail on these items."""
        n, a, b = self.items, self.passed_first, self.passed_second
        spread = a * (n - a) * b * (n - b)
        return (n * self.passed_both - a * b) / spread**0.5 if spread else 0.0


@dataclass
class SegmentEvidence:
    source: str
    tiers: dict[str, TierEvidence] = field(default_factory=dict)
    # (tier, tier) in name order -> their results on shared items (offline only).
    pairs: dict[tuple[str, str], Paired] = field(default_factory=dict)

    @property
    def reference(self) -> TierEvidence | None:
        """The highest-ranked tier with evidence."""
        return max(self.tiers.values(), key=lambda t: t.rank, default=None)

    def relative(self, tier: str) -> tuple[int, Estimate]:
        """The tier's cases and its pass rate relative to the reference's, with a 95%
        interval (the reference's own: exactly 1)."""
        reference = self.reference
        own = self.tiers[tier]
        if self.source == ONLINE:
            if tier == reference.tier:
                return own.cases, _exactly_one(reference.passed)
            estimate = ratio_interval(own.passed, own.cases, reference.passed, reference.cases)
            return own.cases, estimate
        if tier == reference.tier:
            return own.passed, _exactly_one(own.passed)
        pair = self._pair(tier, reference.tier)
        if pair is None:
            return 0, NONE
        both, reference_passed = pair.passed_both, pair.passed_second
        return reference_passed, wilson_interval(both, reference_passed)

    def correlation(self, first: str, second: str) -> float:
        """The correlation of the two tiers' pass-rate estimates: offline, from the items
        they share (phi × shared / √(items of each)); online, 0 (different requests)."""
        pair = self._pair(first, second)
        if pair is None or not pair.items:
            return 0.0
        a, b = self.tiers[first].cases, self.tiers[second].cases
        return pair.correlation() * pair.items / (a * b) ** 0.5

    def _pair(self, tier: str, other: str) -> Paired | None:
        """Their shared items, `tier` first."""
        if tier <= other:
            return self.pairs.get((tier, other))
        found = self.pairs.get((other, tier))
        if found is None:
            return None
        return Paired(found.items, found.passed_second, found.passed_first, found.passed_both)


def _exactly_one(passed: int) -> Estimate:
    return Estimate(1.0, 1.0, 1.0) if passed else NONE


def _summed(
    conn: Connection,
    table: RollupTable,
    select: str,
    *,
    project_id: int,
    within: Period,
    feature: str | None,
) -> list:
    """The rows of `select` ({source}: the table's rows of the period and feature). Hashed,
    not sorted: rollup rows written moments ago have no statistics, and sorting tens of
    thousands of them by six text keys took ten times as long."""
    cover = coverage(conn, project_id=project_id, within=within)
    source, params = Filters(feature=feature).source(table, project_id=project_id, cover=cover)
    with planner_settings(conn, enable_sort="off"):
        return conn.execute(text(select.format(source=source)), params).all()


def _most(counts: Counter) -> tuple:
    """The key with the highest count (ties: the first in order)."""
    return min(counts, key=lambda key: (-counts[key], tuple(str(k) for k in key)))


def online_evidence(
    conn: Connection,
    *,
    project_id: int,
    within: Period,
    feature: str | None,
    floors: FloorBook,
    ranks: dict[str, int],
) -> dict[Segment, SegmentEvidence]:
    """The scored requests of each segment in the period, by served tier (all its models';
    the one that served most of them prices the tier), counted as passed at the segment's
    pass score."""
    rows = _summed(
        conn,
        QUALITY,
        """
        select feature, task_type, served_tier, served_model, served_provider, quality_pct,
               sum(requests)::bigint as requests
        from {source} r group by 1, 2, 3, 4, 5, 6
        """,
        project_id=project_id,
        within=within,
        feature=feature,
    )
    scored: dict[tuple, Counter] = defaultdict(Counter)
    passed: dict[tuple, Counter] = defaultdict(Counter)
    pass_percent: dict[Segment, int] = {}
    for row in rows:
        segment = (row.feature, row.task_type)
        route = (row.served_model, row.served_provider)
        key = (segment, row.served_tier)
        scored[key][route] += row.requests
        if segment not in pass_percent:
            pass_percent[segment] = floors.floor_of(*segment).pass_percent
        if row.quality_pct >= pass_percent[segment]:
            passed[key][route] += row.requests
    found: dict[Segment, SegmentEvidence] = {}
    for (segment, tier), by_route in scored.items():
        model, provider = _most(by_route)
        evidence = found.setdefault(segment, SegmentEvidence(ONLINE))
        evidence.tiers[tier] = TierEvidence(
            tier, ranks[tier], model, provider, sum(by_route.values()),
            sum(passed[(segment, tier)].values()),
        )  # fmt: skip
    return found


def offline_evidence(
    conn: Connection,
    *,
    project_id: int,
    feature: str | None,
    floors: FloorBook,
    ranks: dict[str, int],
) -> dict[Segment, SegmentEvidence]:
    """The evaluation results of each segment, from their pairs (app.models.eval_pairs): per
    tier (its model with the most results) the items scored and passed at the segment's
    pass score, and per pair of tiers their results on the items both were scored on."""
    only = " and feature = :feature" if feature is not None else ""
    rows = conn.execute(
        text(
            "select feature, task_type, first_model, first_tier, second_model, second_tier, "
            f"first_pct, second_pct, items from eval_pairs where project_id = :project_id{only}"
        ),
        {"project_id": project_id, "feature": feature},
    )
    cells: dict[Segment, list] = defaultdict(list)
    for row in rows:
        cells[(row.feature, row.task_type)].append(row)
    return {
        segment: _paired_evidence(found, floors.floor_of(*segment).pass_percent, ranks)
        for segment, found in cells.items()
    }


def _paired_evidence(cells: list, pass_percent: int, ranks: dict[str, int]) -> SegmentEvidence:
    """A segment's evidence from its cells of eval_pairs, at a pass score in hundredths."""
    own: Counter = Counter()  # (model, tier) -> items, and those passed
    own_passed: Counter = Counter()
    pairs: dict[tuple, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for cell in cells:
        first, second = (cell.first_model, cell.first_tier), (cell.second_model, cell.second_tier)
        first_passed = cell.first_pct >= pass_percent
        second_passed = cell.second_pct >= pass_percent
        if first == second:
            own[first] += cell.items
            own_passed[first] += cell.items * first_passed
            continue
        counts = pairs[(first, second)]
        for i, counted in enumerate(
            (True, first_passed, second_passed, first_passed and second_passed)
        ):
            counts[i] += cell.items * counted
    models: dict[str, Counter] = defaultdict(Counter)
    for (model, tier), items in own.items():
        models[tier][(model,)] = items
    chosen = {tier: (_most(found)[0], tier) for tier, found in models.items()}
    evidence = SegmentEvidence(OFFLINE)
    for tier, key in chosen.items():
        evidence.tiers[tier] = TierEvidence(
            tier, ranks[tier], key[0], None, own[key], own_passed[key]
        )
    for (first, second), (items, passed_first, passed_second, both) in pairs.items():
        if chosen.get(first[1]) != first or chosen.get(second[1]) != second:
            continue
        if first[1] > second[1]:  # kept in the order of the tiers' names
            first, second, passed_first, passed_second = second, first, passed_second, passed_first
        evidence.pairs[(first[1], second[1])] = Paired(items, passed_first, passed_second, both)
    return evidence


# --- traffic ---------------------------------------------------------------------------------


@dataclass
class Traffic:
    """A segment's requests over a period: how many, their served tokens, what they cost,
    and per served tier the requests and the models that served them."""

    requests: int = 0
    tokens: Tokens = Tokens()
    cost_usd: Decimal = Decimal(0)
    unpriced_requests: int = 0
    served: Counter = field(default_factory=Counter)  # tier -> requests
    models: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))

    def model_of(self, tier: str) -> tuple[str, str | None] | None:
        """The (model, provider) that served most of the tier's requests, if any did."""
        return _most(self.models[tier]) if self.models.get(tier) else None

    @property
    def served_split(self) -> dict[str, float]:
        total = sum(self.served.values())
        return {tier: n / total for tier, n in self.served.items()} if total else {}


def segment_traffic(
    conn: Connection, *, project_id: int, within: Period, feature: str | None
) -> dict[Segment, Traffic]:
    rows = _summed(
        conn,
        FLOW,
        """
        select feature, task_type, served_tier, served_model, served_provider,
               sum(requests)::bigint as requests,
               sum(served_input_tokens)::bigint as input_tokens,
               sum(served_output_tokens)::bigint as output_tokens,
               sum(served_cache_read_tokens)::bigint as cache_read_tokens,
               sum(served_cache_write_tokens)::bigint as cache_write_tokens,
               sum(cost_usd) as cost_usd, sum(unpriced_requests)::bigint as unpriced
        from {source} r group by 1, 2, 3, 4, 5
        """,
        project_id=project_id,
        within=within,
        feature=feature,
    )
    found: dict[Segment, Traffic] = defaultdict(Traffic)
    for row in rows:
        traffic = found[(row.feature, row.task_type)]
        traffic.requests += row.requests
        traffic.tokens += Tokens(
            row.input_tokens, row.output_tokens, row.cache_read_tokens, row.cache_write_tokens
        )
        traffic.cost_usd = MONEY_CONTEXT.add(traffic.cost_usd, row.cost_usd)
        traffic.unpriced_requests += row.unpriced
        if row.served_tier is not None:
            traffic.served[row.served_tier] += row.requests
            traffic.models[row.served_tier][(row.served_model, row.served_provider)] += row.requests
    return dict(found)


# --- advice ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TierAdvice:
    tier: str
    model: str
    cases: int
    relative: Estimate
    pass_rate: Estimate
    cost_usd: Decimal | None  # the traffic window's served tokens at this tier's model
    cost_per_request: Decimal | None
    meets_target: bool


@dataclass(frozen=True)
class SegmentAdvice:
    feature: str
    task_type: str | None
    evidence: str | None
    floor: QualityFloor
    reference_tier: str | None
    recommended_tier: str
    tiers: tuple[TierAdvice, ...]
    requests: int
    cost_usd: Decimal
    unpriced_requests: int
    projected_savings_usd: Decimal | None
    expected_pass_rate: Estimate

    @property
    def recommendation(self) -> TierAdvice | None:
        return next((t for t in self.tiers if t.tier == self.recommended_tier), None)


@dataclass(frozen=True)
class Advice:
    within: Period
    traffic: Period
    segments: tuple[SegmentAdvice, ...]


@dataclass(frozen=True)
class _Context:
    """What advice and what-ifs of a period read: evidence, traffic, floors, prices."""

    evidence: dict[Segment, SegmentEvidence]
    traffic: dict[Segment, Traffic]
    floors: FloorBook
    ranks: dict[str, int]
    prices: PriceBook
    prices_at: datetime

    def cost(self, model: tuple[str, str | None], tokens: Tokens) -> Decimal | None:
        return self.prices.cost_at(model[0], model[1], self.prices_at, tokens)[0]


def _context(
    conn: Connection,
    *,
    project_id: int,
    evidence_period: Period,
    traffic_period: Period,
    feature: str | None,
    now: datetime | None,
) -> _Context:
    ranks = project_tiers(conn, project_id=project_id)
    floors = load_floors(
        conn, project_id=project_id, features=None if feature is None else [feature]
    )
    evidence = online_evidence(
        conn, project_id=project_id, within=evidence_period, feature=feature, floors=floors,
        ranks=ranks,
    )  # fmt: skip
    evidence.update(
        offline_evidence(conn, project_id=project_id, feature=feature, floors=floors, ranks=ranks)
    )
    traffic = segment_traffic(conn, project_id=project_id, within=traffic_period, feature=feature)
    models = {(t.model, t.provider) for e in evidence.values() for t in e.tiers.values()}
    models |= {m for t in traffic.values() for by_model in t.models.values() for m in by_model}
    prices = PriceBook.load(conn, project_id=project_id, models=models)
    # At the period's end, or now when that is later (the default period ends with the
    # current hour): a price that takes effect later does not apply yet.
    prices_at = min(traffic_period.end, now or utc_now())
    return _Context(evidence, traffic, floors, ranks, prices, prices_at)


def _advise(segment: Segment, context: _Context) -> SegmentAdvice:
    floor = context.floors.floor_of(*segment)
    evidence = context.evidence.get(segment)
    traffic = context.traffic.get(segment, Traffic())
    reference = evidence.reference if evidence else None
    tiers = []
    for own in sorted(evidence.tiers.values(), key=lambda t: t.rank) if evidence else ():
        cases, relative = evidence.relative(own.tier)
        cost = context.cost((own.model, own.provider), traffic.tokens) if traffic.requests else None
        tiers.append(
            TierAdvice(
                tier=own.tier,
                model=own.model,
                cases=cases,
                relative=relative,
                pass_rate=own.pass_rate,
                cost_usd=cost,
                cost_per_request=(
                    MONEY_CONTEXT.divide(cost, traffic.requests) if cost is not None else None
                ),
                meets_target=(
                    relative.low is not None
                    and relative.low >= floor.target
                    and cases >= MIN_CASES
                    and evidence.relative(reference.tier)[0] >= MIN_CASES
                ),
            )
        )
    # The cheapest that meets the floor; a tier whose cost is unknown comes after the priced
    # ones, and with no traffic to price, the lowest-ranked comes first.
    candidates = [t for t in tiers if t.meets_target]
    chosen = min(
        candidates,
        key=lambda t: (t.cost_per_request is None, t.cost_per_request or 0, context.ranks[t.tier]),
        default=None,
    )
    savings = None
    if chosen is not None and chosen.cost_usd is not None:
        savings = MONEY_CONTEXT.subtract(traffic.cost_usd, chosen.cost_usd)
    return SegmentAdvice(
        feature=segment[0],
        task_type=segment[1],
        evidence=evidence.source if evidence else None,
        floor=floor,
        reference_tier=reference.tier if reference else None,
        recommended_tier=chosen.tier if chosen else INSUFFICIENT_EVIDENCE,
        tiers=tuple(tiers),
        requests=traffic.requests,
        cost_usd=traffic.cost_usd,
        unpriced_requests=traffic.unpriced_requests,
        projected_savings_usd=savings,
        expected_pass_rate=chosen.pass_rate if chosen else NONE,
    )


def advice_period(start: str | None, end: str | None, *, now: datetime | None = None) -> Period:
    """The period of online evidence: whole hours, by default the 30 days up to the end of
    the current hour (app.periods.InvalidPeriod for a bad bound)."""
    return hourly_period(start, end, now=now, length=TRAFFIC_WINDOW)


def routing_advice(
    conn: Connection,
    *,
    project_id: int,
    within: Period,
    feature: str | None = None,
    now: datetime | None = None,
) -> Advice:
    """Advice for every segment (of one feature, when given) with evidence or traffic:
    online evidence from the period, traffic from the 30 days before its end."""
    traffic_period = trailing(TRAFFIC_WINDOW, end=within.end)
    context = _context(
        conn, project_id=project_id, evidence_period=within, traffic_period=traffic_period,
        feature=feature, now=now,
    )  # fmt: skip
    segments = sorted(set(context.evidence) | set(context.traffic), key=_segment_order)
    return Advice(within, traffic_period, tuple(_advise(s, context) for s in segments))


def _segment_order(segment: Segment) -> tuple:
    return (segment[0], segment[1] is not None, segment[1] or "")


def top_recommendations(
    conn: Connection, *, project_id: int, within: Period, limit: int = 3
) -> list[SegmentAdvice]:
    """The recommendations that save the most, largest first (those that save nothing or
    cost more are left out)."""
    segments = routing_advice(conn, project_id=project_id, within=within).segments
    saving = [s for s in segments if (s.projected_savings_usd or 0) > 0]
    return sorted(saving, key=lambda s: -s.projected_savings_usd)[:limit]


# --- what-if -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SegmentWhatIf:
    task_type: str | None
    evidence: str | None
    requests: int
    shares: dict[str, float]
    current_cost_usd: Decimal
    projected_cost_usd: Decimal | None
    expected_pass_rate: Estimate

    @property
    def savings_usd(self) -> Decimal | None:
        return _savings(self.current_cost_usd, self.projected_cost_usd)


@dataclass(frozen=True)
class WhatIf:
    feature: str
    within: Period
    segments: tuple[SegmentWhatIf, ...]
    expected_pass_rate: Estimate
    unpriced_requests: int

    @property
    def requests(self) -> int:
        return sum(s.requests for s in self.segments)

    @property
    def current_cost_usd(self) -> Decimal:
        return _total(s.current_cost_usd for s in self.segments)

    @property
    def projected_cost_usd(self) -> Decimal | None:
        costs = [s.projected_cost_usd for s in self.segments]
        return None if None in costs else _total(costs)

    @property
    def savings_usd(self) -> Decimal | None:
        return _savings(self.current_cost_usd, self.projected_cost_usd)


def _savings(current: Decimal, projected: Decimal | None) -> Decimal | None:
    return None if projected is None else MONEY_CONTEXT.subtract(current, projected)


def _total(values: Iterable[Decimal]) -> Decimal:
    total = Decimal(0)
    for value in values:
        total = MONEY_CONTEXT.add(total, value)
    return total


def what_if(
    conn: Connection, *, project_id: int, candidate: WhatIfIn, now: datetime | None = None
) -> WhatIf:
    """The feature's traffic in the period under the candidate: shares per tier for every
    segment, or one segment moved to a tier (the others as they were). Each request's served
    tokens are priced at its candidate tier's model (prices in force at the period's end, or
    now when that is later);
    a segment that stays as it was keeps its real cost. The expected pass rate weighs each
    segment's tiers' pass rates by the candidate's shares and the segments by requests."""
    within = advice_period(candidate.start, candidate.end, now=now)
    context = _context(
        conn, project_id=project_id, evidence_period=within, traffic_period=within,
        feature=candidate.feature, now=now,
    )  # fmt: skip
    feature_traffic = {s: t for s, t in context.traffic.items() if t.requests}
    if not feature_traffic:
        raise NoTraffic(
            f"feature {candidate.feature!r}: no requests from {within.start:%Y-%m-%d %H:%M} "
            f"to {within.end:%Y-%m-%d %H:%M} UTC"
        )
    shares = _candidate_shares(candidate, context, feature_traffic)
    total = sum(t.requests for t in feature_traffic.values())
    segments, terms, correlations = [], [], {}
    for segment in sorted(feature_traffic, key=_segment_order):
        traffic = feature_traffic[segment]
        split = shares.get(segment)
        evidence = context.evidence.get(segment)
        if split is None:  # as it was: its real cost, its served split's pass rate
            split, projected = traffic.served_split, traffic.cost_usd
        else:
            projected = _projected_cost(segment, split, traffic, context, feature_traffic)
        weight = traffic.requests / total
        own_terms, own_correlations = _pass_rate_terms(split, evidence)
        first = len(terms)
        terms += [(share * weight, estimate) for share, estimate in own_terms]
        correlations |= {(first + i, first + j): rho for (i, j), rho in own_correlations.items()}
        segments.append(
            SegmentWhatIf(
                task_type=segment[1],
                evidence=evidence.source if evidence else None,
                requests=traffic.requests,
                shares=split,
                current_cost_usd=traffic.cost_usd,
                projected_cost_usd=projected,
                expected_pass_rate=weighted_sum_interval(own_terms, own_correlations),
            )
        )
    return WhatIf(
        feature=candidate.feature,
        within=within,
        segments=tuple(segments),
        expected_pass_rate=weighted_sum_interval(terms, correlations),
        unpriced_requests=sum(t.unpriced_requests for t in feature_traffic.values()),
    )


def _candidate_shares(
    candidate: WhatIfIn, context: _Context, traffic: dict[Segment, Traffic]
) -> dict[Segment, dict[str, float]]:
    """The candidate split of each segment it changes."""
    if candidate.shares is not None:
        try:
            split = validate_split(candidate.shares, tier_ranks=context.ranks)
        except InvalidPolicy as error:
            raise InvalidCandidate(str(error).replace("split", "shares", 1)) from None
        return {segment: {t: s for t, s in split.items() if s > 0} for segment in traffic}
    if candidate.move_to not in context.ranks:
        known = ", ".join(sorted(context.ranks))
        raise InvalidCandidate(f"move_to: unknown tier {candidate.move_to!r} (known: {known})")
    segment = (candidate.feature, candidate.task_type)
    if segment not in traffic:
        raise NoTraffic(
            f"task_type: feature {candidate.feature!r} has no requests of task type "
            f"{candidate.task_type!r} in the period"
        )
    return {segment: {candidate.move_to: 1.0}}


def _projected_cost(
    segment: Segment,
    split: dict[str, float],
    traffic: Traffic,
    context: _Context,
    feature_traffic: dict[Segment, Traffic],
) -> Decimal | None:
    """Σ share × the segment's served tokens at the tier's model; None when a model has no
    price."""
    total = Decimal(0)
    for tier, share in split.items():
        cost = context.cost(_model_of(tier, segment, context, feature_traffic), traffic.tokens)
        if cost is None:
            return None
        total = MONEY_CONTEXT.add(total, MONEY_CONTEXT.multiply(cost, Decimal(repr(share))))
    return total


def _model_of(
    tier: str, segment: Segment, context: _Context, feature_traffic: dict[Segment, Traffic]
) -> tuple[str, str | None]:
    """The model a tier's share is priced at: its evidence's in the segment, else the one
    that served the tier most in the segment, else in the feature."""
    evidence = context.evidence.get(segment)
    if evidence and tier in evidence.tiers:
        own = evidence.tiers[tier]
        return own.model, own.provider
    found = feature_traffic[segment].model_of(tier)
    if found is None:
        merged = Traffic()
        for traffic in feature_traffic.values():
            for model, n in traffic.models.get(tier, {}).items():
                merged.models[tier][model] += n
        found = merged.model_of(tier)
    if found is None:
        raise InvalidCandidate(
            f"shares.{tier}: no model of tier {tier!r} to price: feature {segment[0]!r} has "
            "no evidence of it and no request it served in the period"
        )
    return found


def _pass_rate_terms(
    split: dict[str, float], evidence: SegmentEvidence | None
) -> tuple[list[tuple[float, Estimate]], dict[tuple[int, int], float]]:
    """A segment's pass rate under a split, as terms of a weighted sum (each tier's share and
    pass rate; no estimate for a tier without evidence) and their correlations."""
    tiers = list(split)
    known = evidence.tiers if evidence else {}
    terms = [(split[t], known[t].pass_rate if t in known else NONE) for t in tiers]
    correlations = {
        (i, j): evidence.correlation(tiers[i], tiers[j])
        for i in range(len(tiers))
        for j in range(i + 1, len(tiers))
        if tiers[i] in known and tiers[j] in known
    }
    return terms, correlations
