"""Controls every page shares: the time range and the filters, all carried in the URL so
that a link shows what its sender saw."""

from __future__ import annotations

from datetime import date, timedelta
from urllib.parse import urlencode

from dash import Input, clientside_callback, dcc, html

from app.periods import Period, days_period, utc_now
from dashboards import auth

DEFAULT_DAYS = 7


def _day(value: str | None, default: date) -> date:
    try:
        return date.fromisoformat((value or "")[:10])
    except ValueError:
        return default


def date_range(component_id: str, query: dict) -> dcc.DatePickerRange:
    """Whole days, the last one included; by default the last DEFAULT_DAYS days."""
    today = utc_now().date()
    end = _day(query.get("end"), today)
    start = _day(query.get("start"), end - timedelta(days=DEFAULT_DAYS - 1))
    return dcc.DatePickerRange(
        id=component_id,
        start_date=start.isoformat(),
        end_date=end.isoformat(),
        display_format="YYYY-MM-DD",
        minimum_nights=0,
        max_date_allowed=(today + timedelta(days=1)).isoformat(),
        className="date-range",
    )


def period_of(start_date: str | None, end_date: str | None) -> Period:
    """[first day's midnight, the midnight after the last day), in UTC."""
    today = utc_now().date()
    end = _day(end_date, today)
    start = min(_day(start_date, end - timedelta(days=DEFAULT_DAYS - 1)), end)
    return days_period(start, end)


def dropdown(component_id: str, options: list[str], value: str | None, placeholder: str):
    return dcc.Dropdown(
        id=component_id,
        options=[{"label": o, "value": o} for o in options],
        value=value if value in options else None,
        placeholder=placeholder,
        clearable=True,
        className="filter",
    )


def url_search(**params: str | None) -> str:
    """The query string of a page's state, the project first."""
    values = {auth.PROJECT_PARAM: auth.membership().project_name}
    values.update({k: v for k, v in params.items() if v not in (None, "")})
    return "?" + urlencode(values)


def url_store(component_id: str) -> dcc.Store:
    """A page writes its query string here; the browser's address follows it (without a
    reload, and without re-rendering the page)."""
    return dcc.Store(id=component_id)


def sync_url(component_id: str) -> None:
    clientside_callback(
        """
        function(search) {
            if (search && search !== window.location.search) {
                window.history.replaceState(null, "", window.location.pathname + search);
            }
        }
        """,
        Input(component_id, "data"),
    )


def toolbar(*controls) -> html.Div:
    return html.Div(list(controls), className="toolbar")
