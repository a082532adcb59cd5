"""Alert rules (GET, POST, PATCH, DELETE /v1/alert-rules) and GET /v1/alerts."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, HTTPException

from app.api.deps import AdminCaller, Db, Id, ReadCaller
from app.api.errors import answers
from app.schemas import AlertOut, AlertRuleChanges, AlertRuleIn, AlertRuleOut
from app.services import alerts
from app.services.alerts import InvalidRule, RuleNotFound

router = APIRouter(prefix="/v1", tags=["alerts"])


@router.get("/alert-rules", response_model=list[AlertRuleOut])
def get_rules(caller: ReadCaller, conn: Db) -> list[dict]:
    return alerts.list_rules(conn, project_id=caller.project_id)


@router.post("/alert-rules", response_model=AlertRuleOut, status_code=201)
def post_rule(body: AlertRuleIn, caller: AdminCaller, conn: Db) -> dict:
    try:
        created = alerts.create_rule(conn, project_id=caller.project_id, rule=body)
    except InvalidRule as error:
        raise HTTPException(422, str(error)) from None
    conn.commit()
    return created


@router.patch("/alert-rules/{rule_id}", response_model=AlertRuleOut, responses=answers(404))
def patch_rule(rule_id: Id, body: AlertRuleChanges, caller: AdminCaller, conn: Db) -> dict:
    try:
        changed = alerts.update_rule(
            conn, project_id=caller.project_id, rule_id=rule_id, changes=body
        )
    except RuleNotFound as error:
        raise HTTPException(404, str(error)) from None
    except InvalidRule as error:
        raise HTTPException(422, str(error)) from None
    conn.commit()
    return changed


@router.delete("/alert-rules/{rule_id}", status_code=204, responses=answers(404))
def delete_rule(rule_id: Id, caller: AdminCaller, conn: Db) -> None:
    try:
        alerts.delete_rule(conn, project_id=caller.project_id, rule_id=rule_id)
    except RuleNotFound as error:
        raise HTTPException(404, str(error)) from None
    conn.commit()


@router.get("/alerts", response_model=list[AlertOut], summary="Alerts, newest first")
def get_alerts(
    caller: ReadCaller, conn: Db, state: Literal["firing", "resolved"] | None = None
) -> list[dict]:
    return alerts.list_alerts(conn, project_id=caller.project_id, state=state)
