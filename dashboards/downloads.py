"""CSV downloads for the signed-in user's project, streamed from app.services.exports."""

from __future__ import annotations

from flask import Flask, Response, request, stream_with_context

from app.db import snapshot
from app.services import exports
from dashboards import auth, filters

CUSTOMERS_PATH = "/exports/customers.csv"
REQUESTS_PATH = "/exports/requests.csv"


def install(server: Flask) -> None:
    server.add_url_rule(CUSTOMERS_PATH, "customers_csv", _customers_csv)
    server.add_url_rule(REQUESTS_PATH, "requests_csv", _requests_csv)


def _customers_csv() -> Response:
    granularity = request.args.get("granularity", "day")
    if granularity not in exports.GRANULARITIES:
        return Response("granularity: day or month", 422)
    return _download(
        "customers",
        lambda conn, project_id, within: exports.customers_csv(
            conn, project_id=project_id, within=within, granularity=granularity
        ),
    )


def _requests_csv() -> Response:
    return _download(
        "requests",
        lambda conn, project_id, within: exports.requests_csv(
            conn, project_id=project_id, within=within
        ),
    )


def _download(name: str, export) -> Response:
    project = auth.membership()
    within = filters.period_of(request.args.get("start"), request.args.get("end"))

    def chunks():
        with snapshot(export=True) as conn:
            for chunk in export(conn, project.project_id, within):
                yield chunk.data

    filename = f"{project.project_name}-{name}-{within.start:%Y-%m-%d}-to-{within.end:%Y-%m-%d}.csv"
    return Response(
        stream_with_context(chunks()),
        mimetype="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )
