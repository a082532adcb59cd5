"""Numbers as people read them. Money is rounded here, at display, and nowhere else."""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal


def usd(value: Decimal | None, places: int = 2) -> str:
    if value is None:
        return "–"
    rounded = Decimal(value).quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_EVEN)
    sign = "-" if rounded < 0 else ""
    return f"{sign}${abs(rounded):,.{places}f}"


def usd_small(value: Decimal | None) -> str:
    """Cost per request and the like: enough places to tell values apart."""
    return usd(value, places=5)


def pct(value: float | Decimal | None, places: int = 1) -> str:
    return "–" if value is None else f"{float(value) * 100:.{places}f}%"


def count(value: int | None) -> str:
    return "–" if value is None else f"{value:,}"


def ms(value: float | None) -> str:
    return "–" if value is None else f"{value:,.0f} ms"


def number(value: float | None, places: int = 2) -> str:
    return "–" if value is None else f"{value:.{places}f}"
