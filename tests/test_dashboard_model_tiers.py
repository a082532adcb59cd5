"""The Models page lists the models that hold requests from traces, and an admin maps one
there: its held requests are assembled at once (headless Chromium, the demo project)."""

from __future__ import annotations

from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from app.db import transaction
from app.services.projects import project_id_by_name
from app.services.traces import receive_export
from tests.helpers import (
    ADMIN,
    choose,
    console_errors,
    open_page,
    shot,
    sign_in,
    wait_for,
    wait_until,
)
from tests.otlp_spans import call, export, new_span_id, new_trace_id
from tools import demo

MODEL = "acme-held-model"


def test_an_admin_maps_a_held_model_on_the_models_page(
    browser, live_dashboard, demo_project, engine
):
    with transaction() as conn:
        project_id = project_id_by_name(conn, name=demo.DEMO_PROJECT)
    span = call(new_trace_id(), new_span_id(), model=MODEL, routeledger__feature="summarize")
    outcome = receive_export(engine, project_id=project_id, export=export(span))
    assert outcome.held == 1

    browser.get_log("browser")
    sign_in(browser, live_dashboard.url, ADMIN)

    def listed() -> bool:
        # A page keeps what it read for 30 s (dashboards.data): an earlier test may have
        # opened this one moments ago, before the request was held.
        open_page(browser, live_dashboard.url, "/models")
        return f"{MODEL}: 1 held requests" in browser.find_element(By.ID, "models-held").text

    wait_until(listed, timeout=45, what="the held model listed")
    shot(browser, "models-held")
    browser.find_element(By.ID, "models-map-model").send_keys(MODEL, Keys.TAB)
    choose(browser, "models-map-tier", "standard")
    browser.find_element(By.ID, "models-map-save").click()
    message = wait_for(browser, "#models-map-message .note-ok").text
    assert f"Mapped {MODEL} to standard: 1 held requests assembled" in message
    wait_until(
        lambda: "No request is waiting" in browser.find_element(By.ID, "models-held").text,
        what="the held list to empty",
    )
    assert console_errors(browser) == []
