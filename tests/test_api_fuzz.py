"""Schemathesis against the OpenAPI document of a real API process: every operation, called
with a key of each scope and with a foreign project's key. No answer is a server error, every
answer is one the document describes (status, headers, body), and no answer to the foreign
key holds anything of the project. Bounded in examples so the suite stays quick."""

from __future__ import annotations

import uuid

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.helpers import attempt, auth, batch, event, make_project, post

EXAMPLES_PER_OPERATION = 12
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]


def _operations() -> list:
    """The operations of the API's OpenAPI document (the one /openapi.json serves)."""
    from app.main import create_app

    schema = schemathesis.openapi.from_dict(create_app().openapi())
    return [result.ok() for result in schema.get_all_operations()]


@pytest.fixture(scope="module")
def marked_project(live_api):
    """A project whose traffic names a marker no other project's answer may hold."""
    marker = f"marker-{uuid.uuid4().hex[:10]}"
    project = make_project(name=f"fuzzed-{marker}")
    events = [
        event(attempt(model=f"{marker}-model"), customer_id=marker, feature=marker)
        for _ in range(3)
    ]
    with httpx.Client(base_url=live_api.url, timeout=30) as http:
        assert post(http, project.ingest_key, batch(*events)).status_code == 200
        http.put(
            f"/v1/policies/{marker}",
            json={"split": {"cheap": 1.0}},
            headers=auth(project.admin_key),
        ).raise_for_status()
    return project, marker


def keys_of(project) -> dict[str, str]:
    """A key of each scope of the project, with room for the fuzzer's pace."""
    from app.db import transaction
    from app.services.projects import create_key

    with transaction() as conn:
        return {
            scope: create_key(
                conn, project_id=project.id, name=f"fuzz {scope}", scopes=[scope],
                rate_limit_per_second=10**6,
            ).secret
            for scope in ("ingest", "read", "admin")
        }  # fmt: skip


@pytest.fixture
def fuzz_keys(marked_project) -> list[tuple[str, str]]:
    """For each operation: a foreign project's keys, then the marked project's (admin last:
    a DELETE of a key may revoke the project's own)."""
    project, _ = marked_project
    foreign = keys_of(make_project())
    own = keys_of(project)
    return [*(("foreign", key) for key in foreign.values()), *own.items()]


@pytest.mark.parametrize("operation", _operations(), ids=lambda operation: operation.label)
def test_every_answer_is_documented_and_no_foreign_data_leaks(
    operation, live_api, marked_project, fuzz_keys
):
    _, marker = marked_project

    @given(case=operation.as_strategy())
    # The same examples on every run, so CI's verdict does not depend on the draw.
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    def call_with_every_key(case):
        for who, key in fuzz_keys:
            response = case.call_and_validate(
                base_url=live_api.url, headers=auth(key), checks=CHECKS
            )
            if who == "foreign":
                assert marker not in response.text, (case.method, case.path, response.text[:300])

    call_with_every_key()
