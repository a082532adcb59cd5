"""The FastAPI application: thin routes over app.services."""

from __future__ import annotations

import gc

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from pydantic import TypeAdapter

from app.api import admin, advice, alerts, errors, exports, health, ingest, metrics, traces
from app.api.bodies import BodyLimitAndGzip
from app.schemas import describe_errors


def _validation_error(_: Request, error: RequestValidationError) -> JSONResponse:
    return JSONResponse({"detail": describe_errors(error.errors(), whole="body")}, status_code=422)


def create_app() -> FastAPI:
    app = FastAPI(
        title="RouteLedger",
        version="1",
        summary="Cost-and-routing observability for LLM products",
    )
    app.add_middleware(BodyLimitAndGzip)
    app.add_exception_handler(RequestValidationError, _validation_error)
    errors.install(app)
    app.include_router(health.router)
    for api in (ingest, admin, metrics, alerts, exports, traces, advice):
        app.include_router(api.router, responses=errors.KEYED)
    app.openapi = lambda: _openapi(app)
    return app


def _openapi(app: FastAPI) -> dict:
    """The generated document, plus the body schemas of routes that parse their own body."""
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title, version=app.version, summary=app.summary, routes=app.routes
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in (*ingest.OPENAPI_EXTRA_MODELS, *advice.OPENAPI_EXTRA_MODELS):
            model_schema = TypeAdapter(model).json_schema(
                ref_template="#/components/schemas/{model}"
            )
            components.update(model_schema.pop("$defs", {}))
            components[model.__name__] = model_schema
        app.openapi_schema = schema
    return app.openapi_schema


app = create_app()
# What the process has made so far (modules, the app, schemas) lives as long as it does: out
# of the cyclic collector's sight, its full collections no longer walk it. Ingest allocates
# enough to run one every few batches: walking all this was a sixth to a quarter of the API
# processes' CPU time.
gc.freeze()
# A call makes and frees tens of thousands of containers, nearly none in a cycle; a young
# collection every 700 of them (the default) cost 3-5 µs per request, either door. At this
# threshold a call's objects are freed by their counts before one runs.
gc.set_threshold(20_000, 10, 10)
