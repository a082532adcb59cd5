"""The dashboard in headless Chromium, over the demo's traffic: sign in, every page with data
and no console error, a filter, the policy editor, an export against its page, and a viewer
refused. Screenshots go to test-artifacts/."""

from __future__ import annotations

import csv
import io
from decimal import Decimal
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from tests.helpers import (
    ADMIN,
    PAGES,
    VIEWER,
    choose,
    console_errors,
    open_page,
    shot,
    sign_in,
    text_of,
    wait_for,
    wait_until,
)
from tools import demo


@pytest.fixture
def site(browser, live_dashboard, demo_project):
    browser.get_log("browser")  # start each test with an empty console
    return live_dashboard.url


def test_sign_in_refuses_a_wrong_password(browser, site):
    browser.delete_all_cookies()
    browser.get(f"{site}/routing")
    assert urlsplit(browser.current_url).path == "/login"
    browser.find_element(By.ID, "email").send_keys(ADMIN[0])
    browser.find_element(By.ID, "password").send_keys("not-the-password")
    browser.find_element(By.ID, "sign-in").click()
    assert "Wrong email or password" in wait_for(browser, ".error").text
    shot(browser, "login-refused")


def test_every_page_renders_with_data_and_no_console_error(browser, site):
    sign_in(browser, site, ADMIN)
    for path in PAGES:
        open_page(browser, site, path)
        name = path.strip("/").replace("/", "-") or "overview"
        shot(browser, name)
        assert console_errors(browser) == [], path
    # The demo's story is on the pages: a negative margin, an unpriced model, an alert
    # that fired and resolved.
    browser.get(f"{site}/customers")
    negative = wait_for(browser, "#customers-table td[data-dash-column='margin_usd']")
    assert "-" in negative.text or "−" in negative.text
    # With an unpriced model among them, the cost is a lower bound and the margin an upper one.
    notes = [
        browser.find_element(By.XPATH, f"//*[@id='{figure}']/following-sibling::div").text
        for figure in ("customers-total-cost", "kf-margin")
    ]
    assert notes == ["lower bound", "at most"], notes
    browser.get(f"{site}/models")
    assert demo.UNPRICED_MODEL in wait_for(browser, "#unpriced-models").text
    # Its cost is unknown, not $0.00.
    cost = browser.find_element(
        By.XPATH,
        f"//tr[td[@data-dash-column='model'][normalize-space()='{demo.UNPRICED_MODEL}']]"
        "/td[@data-dash-column='cost']",
    )
    assert cost.text.strip() == "", cost.text
    browser.get(f"{site}/alerts")
    assert demo.ALERT_RULE in wait_for(browser, "#alerts-table td[data-dash-column='rule']").text
    assert "resolved" in browser.find_element(By.ID, "alerts-table").text


def test_a_filter_changes_a_figure_and_the_url(browser, site):
    sign_in(browser, site, ADMIN)
    open_page(browser, site, "/")
    everything = text_of(browser, "kf-requests")
    choose(browser, "overview-feature", "summarize")
    filtered = wait_until(
        lambda: (text := text_of(browser, "kf-requests")) not in ("", everything) and text,
        what="the requests figure to change",
    )
    assert int(filtered.replace(",", "")) < int(everything.replace(",", ""))
    wait_until(lambda: "feature=summarize" in browser.current_url, what="the URL")
    browser.get(browser.current_url)  # the link shows what its sender saw
    wait_until(
        lambda: text_of(browser, "kf-requests") == filtered,
        what="the shared link to show the filtered figure",
    )
    assert "summarize" in text_of(browser, "overview-feature")
    assert console_errors(browser) == []


def _share_input(browser, tier: str):
    return browser.find_element(
        By.CSS_SELECTOR, f"[id*='routing-policy-share'][id*='\"tier\":\"{tier}\"']"
    )


def test_the_policy_editor_saves(browser, site, demo_project):
    from app.db import connection
    from app.services import policies, projects

    sign_in(browser, site, ADMIN)
    open_page(browser, site, "/routing?feature=summarize")
    shares = {"cheap": "0.6", "standard": "0.3", "premium": "0.1"}
    wait_until(lambda: _share_input(browser, "cheap").get_attribute("value"), what="shares")
    for tier, share in shares.items():
        field = _share_input(browser, tier)
        field.send_keys(Keys.CONTROL, "a")
        field.send_keys(share)
    browser.find_element(By.ID, "routing-policy-save").click()
    assert "Saved" in wait_for(browser, "#routing-policy-message .note-ok").text
    shot(browser, "policy-saved")
    with connection() as conn:
        project_id = projects.project_id_by_name(conn, name=demo_project.project)
        latest = policies.policy_history(conn, project_id=project_id, feature="summarize")[-1]
    assert latest["split"] == {tier: float(v) for tier, v in shares.items()}
    assert console_errors(browser) == []


def test_an_export_downloads_a_csv_whose_totals_match_the_page(browser, site):
    sign_in(browser, site, ADMIN)
    open_page(browser, site, "/exports")
    shown_cost = wait_until(
        lambda: (
            browser.find_element(By.ID, "exports-total-cost").text.startswith("$")
            and browser.find_element(By.ID, "exports-total-cost").text
        ),
        what="the total cost",
    )
    shown_revenue = browser.find_element(By.ID, "exports-total-revenue").text
    link = browser.find_element(By.ID, "exports-customers-link")
    query = parse_qs(urlsplit(link.get_attribute("href")).query)
    assert query["granularity"] == ["day"]
    for old in browser.downloads.glob("*.csv"):
        old.unlink()
    link.click()
    csv_file = wait_until(
        lambda: [p for p in browser.downloads.glob("*.csv")], what="the download"
    )[0]
    wait_until(lambda: not list(browser.downloads.glob("*.crdownload")), what="the download")
    rows = list(csv.DictReader(io.StringIO(csv_file.read_text(encoding="utf-8"))))
    assert rows, "the export is empty"
    cost = sum(Decimal(r["cost_usd"]) for r in rows)
    revenue = sum(Decimal(r["revenue_usd"]) for r in rows)
    assert f"${cost.quantize(Decimal('0.01')):,}" == shown_cost
    assert f"${revenue.quantize(Decimal('0.01')):,}" == shown_revenue
    assert console_errors(browser) == []


def test_a_viewer_is_refused_an_admin_action(browser, site, demo_project):
    from app.db import connection
    from app.services import policies, projects

    sign_in(browser, site, VIEWER)
    assert "viewer" in browser.find_element(By.ID, "whoami").text
    open_page(browser, site, "/routing?feature=support-chat")
    save = browser.find_element(By.ID, "routing-policy-save")
    assert not save.is_enabled()
    with connection() as conn:
        project_id = projects.project_id_by_name(conn, name=demo_project.project)
        before = policies.policy_history(conn, project_id=project_id, feature="support-chat")
    # Past the disabled button (as a hand-made request would be): the server refuses.
    browser.execute_script(
        "window.dash_clientside.set_props('routing-policy-save', {n_clicks: 1});"
    )
    refused = wait_for(browser, "#routing-policy-message .note-error").text
    assert "only admins" in refused
    shot(browser, "viewer-refused")
    with connection() as conn:
        after = policies.policy_history(conn, project_id=project_id, feature="support-chat")
    assert after == before


def test_the_margin_table_filter_is_carried_in_the_url(browser, site):
    sign_in(browser, site, VIEWER)
    open_page(browser, site, "/customers?" + urlencode({"filter": "{margin_usd} < 0"}))
    wait_until(
        lambda: len(browser.find_elements(By.CSS_SELECTOR, "#customers-table tbody tr")) == 3,
        what="the filtered table (header, filter row, one customer)",
    )
    assert "globex" in browser.find_element(By.ID, "customers-table").text
    assert "acme" not in browser.find_element(By.ID, "customers-table").text
    shot(browser, "customers-negative-margin")
    assert console_errors(browser) == []


def test_an_unpriced_model_is_priced_from_its_link(browser, site):
    sign_in(browser, site, ADMIN)
    browser.get(f"{site}/models")
    wait_for(browser, "#unpriced-models a.add-price").click()
    model_field = wait_for(browser, "#prices-model")
    wait_until(lambda: model_field.get_attribute("value") == demo.UNPRICED_MODEL, what="prefill")
    for field, value in (("prices-input-per-mtok", "0.5"), ("prices-output-per-mtok", "1.5")):
        browser.find_element(By.ID, field).send_keys(value, Keys.TAB)
    browser.find_element(By.ID, "prices-save").click()
    assert "Saved" in wait_for(browser, "#prices-message .note-ok").text
    wait_until(
        lambda: demo.UNPRICED_MODEL in browser.find_element(By.ID, "prices-own").text,
        what="the new price in the project's prices",
    )
    shot(browser, "price-added")
    assert console_errors(browser) == []


def test_an_admin_creates_an_alert_rule(browser, site):
    sign_in(browser, site, ADMIN)
    open_page(browser, site, "/alerts")
    name = browser.find_element(By.ID, "alerts-rule-name")
    name.send_keys(Keys.CONTROL, "a")
    name.send_keys("summarize fallbacks", Keys.TAB)
    choose(browser, "alerts-rule-feature", "summarize")
    browser.find_element(By.ID, "alerts-rule-create").click()
    assert "created" in wait_for(browser, "#alerts-rule-message .note-ok").text
    wait_until(
        lambda: "summarize fallbacks" in browser.find_element(By.ID, "alerts-rules").text,
        what="the new rule in the rules table",
    )
    assert console_errors(browser) == []


def test_an_alert_emails_link_picks_out_its_rule(browser, site, engine):
    """An alert email links to /alerts?project=NAME&rule=ID: that rule is picked out in the
    rules table."""
    from sqlalchemy import text

    with engine.connect() as conn:
        rule_id = conn.execute(
            text(
                "select r.id from alert_rules r join projects p on p.id = r.project_id "
                "where p.name = :project and r.name = :rule"
            ),
            {"project": demo.DEMO_PROJECT, "rule": demo.ALERT_RULE},
        ).scalar_one()
    sign_in(browser, site, ADMIN)
    open_page(browser, site, f"/alerts?project={demo.DEMO_PROJECT}&rule={rule_id}")
    cells = "#alerts-rules td[data-dash-column='id']"
    [picked] = wait_until(
        lambda: [
            td
            for td in browser.find_elements(By.CSS_SELECTOR, cells)
            if td.text.strip() == str(rule_id)
        ],
        what="the linked rule's row",
    )
    assert picked.value_of_css_property("font-weight") == "600"
    assert console_errors(browser) == []


def test_names_from_the_events_are_text_in_the_charts_never_links(browser, site, engine):
    """Anyone with an ingest key names the models: one named with a link is drawn as the text
    it is in the chart's labels (Plotly would draw a link), as in the tables. (A project of
    its own: the demo's figures stay the demo's.)"""
    from datetime import timedelta

    from app.periods import utc_now
    from app.services.batches import Batch
    from app.services.ingest import ingest_batch
    from app.services.rollups import run_rollup
    from tests.helpers import LOGIN_PASSWORD, attempt, event, make_login, make_project

    project = make_project()
    login = ("odd-names@example.com", LOGIN_PASSWORD)
    make_login(login[0], **{project.name: "viewer"})
    name = '<a href="https://evil.example/">sign in again</a>'
    odd = event(
        attempt(model=name, tier="cheap", cost_usd="0.001"),
        timestamp=(utc_now() - timedelta(hours=1)).isoformat(),
    )
    assert ingest_batch(engine, project_id=project.id, batch=Batch([odd])).accepted == 1
    run_rollup(engine)
    sign_in(browser, site, login)
    open_page(browser, site, "/models")
    wait_until(lambda: name in text_of(browser, "models-cost"), what="the model in the chart")
    links = browser.execute_script(
        "return [...document.querySelectorAll('a')].map(a => a.getAttribute('href') || "
        "a.getAttributeNS('http://www.w3.org/1999/xlink', 'href') || '')"
    )
    assert not [link for link in links if "evil.example" in link]
    shot(browser, "models-odd-name")
    assert console_errors(browser) == []


def test_a_tab_keeps_its_project_after_another_tab_switches(browser, site):
    """A member of two projects looks at the demo's overview in one tab and switches to the
    other project in a second tab: the first tab's filter still reads the demo's figures
    (it read the session's project, the other one's, under the demo's title), and its
    export links download the demo's."""
    from tests.helpers import LOGIN_PASSWORD, make_login, make_project

    other = make_project()
    login = ("two-tabs@example.com", LOGIN_PASSWORD)
    make_login(login[0], **{demo.DEMO_PROJECT: "admin", other.name: "admin"})
    sign_in(browser, site, login)
    first_tab = browser.current_window_handle
    open_page(browser, site, f"/?project={demo.DEMO_PROJECT}")
    everything = wait_until(lambda: text_of(browser, "kf-requests"), what="the requests figure")
    try:
        browser.switch_to.new_window("tab")
        browser.get(f"{site}/?project={other.name}")  # no traffic: no chart to wait for
        wait_until(
            lambda: (
                other.name in text_of(browser, "whoami")
                or other.name in (browser.find_element(By.TAG_NAME, "body").text)
            ),
            what="the other project",
        )
        browser.close()
    finally:
        browser.switch_to.window(first_tab)
    choose(browser, "overview-feature", "summarize")
    filtered = wait_until(
        lambda: (text := text_of(browser, "kf-requests")) not in ("", everything) and text,
        what="the requests figure to change",
    )
    assert 0 < int(filtered.replace(",", "")) < int(everything.replace(",", ""))
    assert f"Overview · {demo.DEMO_PROJECT}" in browser.find_element(By.TAG_NAME, "h1").text
    browser.find_element(By.LINK_TEXT, "Exports").click()
    link = wait_for(browser, "#exports-customers-link")
    wait_until(lambda: "project=" in (link.get_attribute("href") or ""), what="the export link")
    assert parse_qs(urlsplit(link.get_attribute("href")).query)["project"] == [demo.DEMO_PROJECT]
    # The switcher still moves this tab to the other project.
    choose(browser, "project-switcher", other.name)
    wait_until(lambda: _page_project(browser) == other.name, what="the other project")
    assert console_errors(browser) == []


def _page_project(browser) -> str | None:
    """The project the page says it shows (the page reloads meanwhile: found afresh)."""
    try:
        found = browser.find_elements(By.ID, "page-project")
        return found[0].get_attribute("data-project") if found else None
    except StaleElementReferenceException:
        return None
