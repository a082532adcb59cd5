"""The Advisor page and the Routing page's flow and quality floor in headless Chromium, over
the demo's traffic plus evaluation results for one feature: recommendations first, the
evidence a click away, the CSV against the page, the Sankey's nodes, the floor saved by an
admin and refused to a viewer. Screenshots go to test-artifacts/."""

from __future__ import annotations

import csv
import io
import re
from decimal import Decimal

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from sqlalchemy import delete

from app.db import connection, transaction
from app.models import quality_floors as floors_table
from app.services import projects, quality_floors
from app.services.evals import record_evals
from tests.helpers import (
    ADMIN,
    VIEWER,
    console_errors,
    open_page,
    shot,
    sign_in,
    text_of,
    wait_for,
    wait_until,
)
from tools import demo

CHEAP_MODEL, STANDARD_MODEL = demo.LADDER["cheap"][0], demo.LADDER["standard"][0]


@pytest.fixture(scope="module")
def evaluated(demo_project):
    """summarize, evaluated offline: the cheap model passes 990 of the 1,000 items the
    standard one passes, so moving summarize's standard share to cheap saves money."""
    results = [
        {"item_id": f"doc-{i}", "model": model, "tier": tier, "feature": "summarize",
         "score": 0.9 if (tier == "standard" or i < 990) else 0.2}
        for i in range(1000)
        for model, tier in ((CHEAP_MODEL, "cheap"), (STANDARD_MODEL, "standard"))
    ]  # fmt: skip
    with transaction() as conn:
        project_id = projects.project_id_by_name(conn, name=demo_project.project)
        assert record_evals(conn, project_id=project_id, items=results).errors == []
    return project_id


@pytest.fixture
def site(browser, live_dashboard, evaluated):
    browser.get_log("browser")  # start each test with an empty console
    return live_dashboard.url


def _cells(browser, column: str) -> list[str]:
    return [
        cell.text
        for cell in browser.find_elements(
            By.CSS_SELECTOR, f"#advisor-table td[data-dash-column='{column}']"
        )
    ]


def _dollars(cell: str) -> Decimal:
    """A money cell ($1,234.56, -$0.52 or empty) as a number; empty is 0."""
    return Decimal(re.sub(r"[^0-9.\-]", "", cell.replace("−", "-")) or "0")


def test_the_advisor_shows_recommendations_first_and_evidence_a_click_away(browser, site):
    sign_in(browser, site, ADMIN)
    open_page(browser, site, "/advisor")
    features = wait_until(lambda: _cells(browser, "feature"), what="the recommendations")
    # Recommendations first, the largest savings at the top; insufficient evidence last.
    savings = [_dollars(cell) for cell in _cells(browser, "savings")]
    recommended = _cells(browser, "recommended")
    advised = [s for s, r in zip(savings, recommended, strict=True) if r != "insufficient evidence"]
    assert savings[: len(advised)] == advised == sorted(advised, reverse=True)
    assert advised[0] > 0
    row = features.index("summarize")
    assert recommended[row] == "cheap" and savings[row] > 0
    assert text_of(browser, "advisor-evidence").startswith("Click a recommendation")
    shot(browser, "advisor")

    browser.find_elements(By.CSS_SELECTOR, "#advisor-table td[data-dash-column='feature']")[
        row
    ].click()
    browser.execute_script(
        "arguments[0].scrollIntoView()", wait_for(browser, "#advisor-evidence-graph .trace")
    )
    tiers = wait_for(browser, "#advisor-evidence-tiers").text
    assert CHEAP_MODEL in tiers and STANDARD_MODEL in tiers and "99.0%" in tiers
    assert "offline evaluation results" in text_of(browser, "advisor-evidence")
    wait_for(browser, "#advisor-reliability .trace")
    shot(browser, "advisor-evidence")

    for old in browser.downloads.glob("*.csv"):
        old.unlink()
    browser.find_element(By.ID, "advisor-download-button").click()
    csv_file = wait_until(lambda: list(browser.downloads.glob("*advice*.csv")), what="the CSV")[0]
    wait_until(lambda: not list(browser.downloads.glob("*.crdownload")), what="the download")
    rows = list(csv.DictReader(io.StringIO(csv_file.read_text(encoding="utf-8"))))
    summarize = [r for r in rows if r["feature"] == "summarize"]
    assert {r["tier"] for r in summarize} == {"cheap", "standard"}
    assert summarize[0]["recommended_tier"] == "cheap" and summarize[0]["evidence"] == "offline"
    savings = {(r["feature"], r["task_type"]): r["projected_savings_usd"] for r in rows}
    total = sum((Decimal(v) for v in savings.values() if v and Decimal(v) > 0), Decimal(0))
    assert text_of(browser, "advisor-savings") == f"${total.quantize(Decimal('0.01')):,}"
    assert console_errors(browser) == []


def test_the_routing_page_draws_the_routing_flow(browser, site):
    sign_in(browser, site, VIEWER)
    open_page(browser, site, "/routing?feature=support-chat")
    flow = wait_for(browser, "#routing-flow .sankey")
    labels = wait_until(
        lambda: [n.text for n in flow.find_elements(By.CSS_SELECTOR, ".node-label")],
        what="the Sankey's node labels",
    )
    assert {"intended cheap", f"first: {CHEAP_MODEL}", f"served: {STANDARD_MODEL}"} <= set(labels)
    browser.execute_script("arguments[0].scrollIntoView()", flow)
    shot(browser, "routing-flow")
    assert console_errors(browser) == []


def test_an_admin_sets_the_quality_floor_and_a_viewer_cannot(browser, site, evaluated):
    sign_in(browser, site, VIEWER)
    open_page(browser, site, "/routing?feature=summarize")
    assert not browser.find_element(By.ID, "routing-floor-save").is_enabled()

    sign_in(browser, site, ADMIN)
    open_page(browser, site, "/routing?feature=summarize")
    field = browser.find_element(By.ID, "routing-floor-pass-score")
    wait_until(lambda: field.get_attribute("value") == "0.7", what="the default floor")
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys("0.8")
    browser.find_element(By.ID, "routing-floor-save").click()
    saved = wait_for(browser, "#routing-floor-message .note-ok").text
    assert "Saved: summarize passes from 0.8" in saved
    with connection() as conn:
        floor = quality_floors.load_floors(conn, project_id=evaluated).floor_of("summarize", None)
    assert (floor.pass_score, floor.target) == (Decimal("0.8"), Decimal("0.95"))
    with transaction() as conn:  # back to the defaults for the other tests
        conn.execute(delete(floors_table).where(floors_table.c.project_id == evaluated))
    assert console_errors(browser) == []
