"""The FastAPI application: thin routes over app.services."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from pydantic import TypeAdapter

from app.api import admin, alerts, exports, health, ingest, metrics, traces
from app.api.bodies import BodyLimitAndGzip
from app.services.ingest import field_path


def _validation_error(_: Request, error: RequestValidationError) -> JSONResponse:
    messages = []
    for item in error.errors():
        loc = [p for p in item["loc"] if p != "body"]
        message = "unknown field" if item["type"] == "extra_forbidden" else item["msg"]
        messages.append(f"{field_path(loc)}: {message}")
    return JSONResponse({"detail": "; ".join(messages)}, status_code=422)


def create_app() -> FastAPI:
    app = FastAPI(
        title="RouteLedger",
        version="1",
        summary="Cost-and-routing observability for LLM products",
    )
    app.add_middleware(BodyLimitAndGzip)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.include_router(health.router)
    app.include_router(ingest.router)
    app.include_router(admin.router)
    app.include_router(metrics.router)
    app.include_router(alerts.router)
    app.include_router(exports.router)
    app.include_router(traces.router)
    app.openapi = lambda: _openapi(app)
    return app


def _openapi(app: FastAPI) -> dict:
    """The generated document, plus the body schemas of routes that parse their own body."""
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title, version=app.version, summary=app.summary, routes=app.routes
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in ingest.OPENAPI_EXTRA_MODELS:
            model_schema = TypeAdapter(model).json_schema(
                ref_template="#/components/schemas/{model}"
            )
            components.update(model_schema.pop("$defs", {}))
            components[model.__name__] = model_schema
        app.openapi_schema = schema
    return app.openapi_schema


app = create_app()
