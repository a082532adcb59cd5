"""Admin calls: prices, policies, revenue records and API keys of the caller's project."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, HTTPException

from app.api.deps import AdminCaller, Db, Id, Name, PathName, ReadCaller
from app.api.errors import answers
from app.schemas import (
    KeyCreated,
    KeyIn,
    KeyOut,
    PolicyHistoryEntry,
    PolicyIn,
    PolicyOut,
    PriceList,
    PriceOut,
    PricesIn,
    RevenueIn,
    RevenueResult,
)
from app.services import pricing, projects
from app.services.metrics import money_text
from app.services.policies import InvalidPolicy, policy_history, set_policy
from app.services.revenue import InvalidRevenue, add_revenue

router = APIRouter(prefix="/v1")


def _price_out(row: dict) -> PriceOut:
    return PriceOut(
        id=row["id"],
        model=row["model"],
        provider=row["provider"] or None,
        input_per_mtok=money_text(row["input_per_mtok"]),
        output_per_mtok=money_text(row["output_per_mtok"]),
        cache_read_per_mtok=money_text(row["cache_read_per_mtok"]),
        cache_write_per_mtok=money_text(row["cache_write_per_mtok"]),
        effective_from=row["effective_from"],
        source=row["source"],
        scope="catalog" if row["project_id"] is None else "project",
    )


@router.get("/prices", response_model=PriceList, tags=["prices"], summary="The price catalog")
def get_prices(
    caller: ReadCaller,
    conn: Db,
    model: Name = None,
    scope: Literal["all", "project", "catalog"] = "all",
) -> PriceList:
    rows = pricing.list_prices(
        conn, project_id=caller.project_id, model=model, include_catalog=scope != "project"
    )
    if scope == "catalog":
        rows = [r for r in rows if r["project_id"] is None]
    return PriceList(
        prices=[_price_out(r) for r in rows], catalog_version=pricing.catalog_version(conn)
    )


@router.post(
    "/prices",
    response_model=PriceList,
    status_code=201,
    tags=["prices"],
    summary="Add the project's own prices; each applies from its effective_from on",
    responses=answers(409, _409="a price of this model and provider from this instant exists"),
)
def post_prices(body: PricesIn, caller: AdminCaller, conn: Db) -> PriceList:
    try:
        ids = pricing.add_prices(conn, project_id=caller.project_id, prices=body.prices)
    except pricing.DuplicatePrice as error:
        raise HTTPException(409, str(error)) from None
    conn.commit()
    rows = [
        r
        for r in pricing.list_prices(conn, project_id=caller.project_id, include_catalog=False)
        if r["id"] in set(ids)
    ]
    return PriceList(
        prices=[_price_out(r) for r in rows], catalog_version=pricing.catalog_version(conn)
    )


@router.get(
    "/policies/{feature}", response_model=PolicyOut, tags=["policies"], responses=answers(404)
)
def get_policy(feature: PathName, caller: ReadCaller, conn: Db) -> PolicyOut:
    history = policy_history(conn, project_id=caller.project_id, feature=feature)
    if not history:
        raise HTTPException(404, f"no policy for feature {feature!r}")
    current = history[-1]
    return PolicyOut(
        feature=feature,
        split=current["split"],
        effective_from=current["effective_from"],
        history=[PolicyHistoryEntry(**h) for h in history],
    )


@router.put("/policies/{feature}", response_model=PolicyOut, tags=["policies"])
def put_policy(feature: PathName, body: PolicyIn, caller: AdminCaller, conn: Db) -> PolicyOut:
    try:
        set_policy(conn, project_id=caller.project_id, feature=feature, policy=body)
    except InvalidPolicy as error:
        raise HTTPException(422, str(error)) from None
    conn.commit()
    return get_policy(feature, caller, conn)


@router.post("/revenue", response_model=RevenueResult, status_code=201, tags=["revenue"])
def post_revenue(body: RevenueIn, caller: AdminCaller, conn: Db) -> RevenueResult:
    try:
        added = add_revenue(conn, project_id=caller.project_id, records=body.records)
    except InvalidRevenue as error:
        raise HTTPException(422, str(error)) from None
    conn.commit()
    return RevenueResult(accepted=added.accepted, duplicates=added.duplicates)


@router.get("/keys", response_model=list[KeyOut], tags=["keys"])
def get_keys(caller: AdminCaller, conn: Db) -> list[KeyOut]:
    return [KeyOut(**k) for k in projects.list_keys(conn, project_id=caller.project_id)]


@router.post("/keys", response_model=KeyCreated, status_code=201, tags=["keys"])
def post_key(body: KeyIn, caller: AdminCaller, conn: Db) -> KeyCreated:
    key = projects.create_key(
        conn,
        project_id=caller.project_id,
        name=body.name,
        scopes=list(body.scopes),
        rate_limit_per_second=body.rate_limit_per_second,
    )
    conn.commit()
    created = next(
        k for k in projects.list_keys(conn, project_id=caller.project_id) if k["id"] == key.id
    )
    return KeyCreated(**created, key=key.secret)


@router.delete("/keys/{key_id}", status_code=204, tags=["keys"], responses=answers(404))
def delete_key(key_id: Id, caller: AdminCaller, conn: Db) -> None:
    if not projects.revoke_key(conn, project_id=caller.project_id, key_id=key_id):
        raise HTTPException(404, f"no live key {key_id} in this project")
    conn.commit()
