"""Routing advice (DESIGN.md, Routing advice): GET /v1/advice/routing (and its CSV),
POST /v1/advice/what-if, POST /v1/evals, GET and PUT /v1/quality-floors."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from app.api.bodies import read_json_batch
from app.api.deps import (
    AdminCaller,
    Bound,
    Db,
    IngestCaller,
    Name,
    PathName,
    ReadCaller,
    ReadDb,
)
from app.api.errors import answers
from app.db import transaction
from app.periods import InvalidPeriod, Period
from app.schemas import (
    AdviceOut,
    EvalBatch,
    EvalsResult,
    IntervalOut,
    QualityFloorIn,
    QualityFloorList,
    QualityFloorOut,
    SegmentAdviceOut,
    TierAdviceOut,
    WhatIfIn,
    WhatIfOut,
    WhatIfSegmentOut,
)
from app.services import advice, exports, quality_floors
from app.services.evals import record_evals
from app.services.intervals import Estimate
from app.services.metrics import money_text

router = APIRouter(prefix="/v1")


_PERIOD = "a bound that is not a whole UTC hour, or start not before end"
_NO_FEATURE = "the feature has no traffic in the 30 days before end and no evidence"


def _period(start: str | None, end: str | None) -> Period:
    try:
        return advice.advice_period(start, end)
    except InvalidPeriod as error:
        raise HTTPException(422, str(error)) from None


def _advice(conn, caller, feature: str | None, start, end) -> advice.Advice:
    found = advice.routing_advice(
        conn, project_id=caller.project_id, within=_period(start, end), feature=feature
    )
    if feature is not None and not found.segments:
        raise HTTPException(404, f"feature {feature!r}: no traffic in the 30 days before end "
                                 "and no evidence")  # fmt: skip
    return found


def _interval(estimate: Estimate) -> IntervalOut:
    return IntervalOut(value=estimate.value, low=estimate.low, high=estimate.high)


def _segment_out(segment: advice.SegmentAdvice) -> SegmentAdviceOut:
    return SegmentAdviceOut(
        feature=segment.feature,
        task_type=segment.task_type,
        evidence=segment.evidence,
        pass_score=float(segment.floor.pass_score),
        target=float(segment.floor.target),
        reference_tier=segment.reference_tier,
        recommended_tier=segment.recommended_tier,
        projected_savings_usd=money_text(segment.projected_savings_usd),
        expected_pass_rate=_interval(segment.expected_pass_rate),
        requests=segment.requests,
        cost_usd=money_text(segment.cost_usd),
        cost_is_lower_bound=segment.unpriced_requests > 0,
        tiers=[
            TierAdviceOut(
                tier=t.tier,
                model=t.model,
                cases=t.cases,
                relative_pass_rate=t.relative.value,
                low=t.relative.low,
                high=t.relative.high,
                cost_per_request_usd=money_text(t.cost_per_request),
                pass_rate=_interval(t.pass_rate),
                meets_target=t.meets_target,
            )
            for t in segment.tiers
        ],
    )


@router.get(
    "/advice/routing",
    response_model=AdviceOut,
    tags=["advice"],
    summary="Per feature and task type: the cheapest tier that meets the quality floor",
    description=(
        "For each segment (feature, task type): per tier with evidence, its pass rate "
        "relative to the reference (the highest-ranked tier with evidence) with a 95% "
        "interval, the cases behind it and its cost per request at current prices; the "
        "recommended tier (the cheapest whose interval's lower bound meets the target, with "
        f"at least {advice.MIN_CASES} cases; else insufficient_evidence) and what moving "
        "there saves per 30 days. Online evidence is the scored requests in [start, end) "
        "(default: the 30 days up to the next hour); costs are the 30 days before end."
    ),
    responses=answers(404, 422, _404=_NO_FEATURE, _422=_PERIOD),
)
def get_advice(
    caller: ReadCaller, conn: ReadDb, feature: Name = None, start: Bound = None, end: Bound = None
) -> AdviceOut:
    found = _advice(conn, caller, feature, start, end)
    return AdviceOut(
        start=found.within.start,
        end=found.within.end,
        traffic_start=found.traffic.start,
        traffic_end=found.traffic.end,
        segments=[_segment_out(s) for s in found.segments],
    )


@router.get(
    "/advice/routing.csv",
    tags=["advice"],
    summary="The same advice as CSV: one row per segment and tier",
    response_class=Response,
    responses={
        200: {"content": {"text/csv": {}}, "description": "RFC 4180 CSV, UTF-8"},
        **answers(404, 422, _404=_NO_FEATURE, _422=_PERIOD),
    },
)
def get_advice_csv(
    caller: ReadCaller, conn: ReadDb, feature: Name = None, start: Bound = None, end: Bound = None
) -> Response:
    found = _advice(conn, caller, feature, start, end)
    name = f"advice_{found.within.start:%Y%m%dT%H}_{found.within.end:%Y%m%dT%H}.csv"
    return Response(
        exports.advice_csv(found),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


@router.post(
    "/advice/what-if",
    response_model=WhatIfOut,
    tags=["advice"],
    summary="A candidate split over real traffic: projected cost, savings, pass rate",
    description=(
        "`shares` (per tier, summing to 1) for every segment of the feature, or `move_to` a "
        "tier for one segment (`task_type`; the others stay as they were), over the "
        "feature's requests in [start, end) (default: the 30 days up to the next hour). "
        "Each request's served tokens are priced at its candidate tier's model at end; the "
        "expected pass rate weighs the tiers' pass rates (evidence as for the advice) with a "
        "95% interval."
    ),
    responses=answers(
        404,
        422,
        _404="the feature (or the task type moved) has no requests in the period",
        _422="an unknown tier, shares that do not sum to 1, a tier with no model to "
        "price, a bad period, or a body that is not a candidate",
    ),
)
def post_what_if(body: WhatIfIn, caller: ReadCaller, conn: ReadDb) -> WhatIfOut:
    try:
        found = advice.what_if(conn, project_id=caller.project_id, candidate=body)
    except (InvalidPeriod, advice.InvalidCandidate) as error:
        raise HTTPException(422, str(error)) from None
    except advice.NoTraffic as error:
        raise HTTPException(404, str(error)) from None
    return WhatIfOut(
        feature=found.feature,
        start=found.within.start,
        end=found.within.end,
        requests=found.requests,
        current_cost_usd=money_text(found.current_cost_usd),
        cost_is_lower_bound=found.unpriced_requests > 0,
        projected_cost_usd=money_text(found.projected_cost_usd),
        savings_usd=money_text(found.savings_usd),
        expected_pass_rate=_interval(found.expected_pass_rate),
        segments=[
            WhatIfSegmentOut(
                task_type=s.task_type,
                evidence=s.evidence,
                requests=s.requests,
                shares=s.shares,
                current_cost_usd=money_text(s.current_cost_usd),
                projected_cost_usd=money_text(s.projected_cost_usd),
                savings_usd=money_text(s.savings_usd),
                expected_pass_rate=_interval(s.expected_pass_rate),
            )
            for s in found.segments
        ],
    )


@router.post(
    "/evals",
    response_model=EvalsResult,
    tags=["advice"],
    summary="Offline evaluation results: one model's score on one item",
    description=(
        '`{"results": [{"item_id", "model", "score", "feature", "task_type", "tier"}]}`, 1 '
        "to 1000 results; a result's tier is the one it names, else its model's in the "
        "project's model-to-tier map. 200: every result stored (the same item and model "
        "again replaces its score); 207: some refused, listed by index, the others stored."
    ),
    responses={
        207: {"model": EvalsResult, "description": "some results refused"},
        **answers(400, 413, 415, 422, _415="not JSON", _422='JSON, but not {"results": [...]}'),
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/EvalBatch"}}},
        }
    },
)
async def post_evals(request: Request, caller: IngestCaller) -> Response:
    batch = await read_json_batch(request, "results")
    result = await run_in_threadpool(_record_evals, caller.project_id, batch.items)
    return Response(
        result.model_dump_json(),
        status_code=207 if result.errors else 200,
        media_type="application/json",
    )


def _record_evals(project_id: int, items: list) -> EvalsResult:
    with transaction() as conn:
        return record_evals(conn, project_id=project_id, items=items)


def _floor_out(floor: quality_floors.QualityFloor) -> QualityFloorOut:
    return QualityFloorOut(
        feature=floor.feature,
        task_type=floor.task_type,
        pass_score=float(floor.pass_score),
        target=float(floor.target),
        updated_at=floor.updated_at,
    )


@router.get(
    "/quality-floors",
    response_model=QualityFloorList,
    tags=["advice"],
    summary="The project's quality floors (a segment without one has the defaults)",
)
def get_quality_floors(caller: ReadCaller, conn: Db) -> QualityFloorList:
    floors = quality_floors.list_floors(conn, project_id=caller.project_id)
    return QualityFloorList(quality_floors=[_floor_out(f) for f in floors])


@router.put(
    "/quality-floors/{feature}",
    response_model=QualityFloorOut,
    tags=["advice"],
    summary="Set a feature's quality floor, or a task type's within it",
    responses=answers(
        422,
        _422="a pass score outside [0, 1] or with more than two decimals, a target "
        "outside (0, 1], or an unknown field",
    ),  # fmt: skip
)
def put_quality_floor(
    feature: PathName, body: QualityFloorIn, caller: AdminCaller, conn: Db
) -> QualityFloorOut:
    floor = quality_floors.set_floor(
        conn, project_id=caller.project_id, feature=feature, floor=body
    )
    conn.commit()
    return _floor_out(floor)


OPENAPI_EXTRA_MODELS = (EvalBatch,)
