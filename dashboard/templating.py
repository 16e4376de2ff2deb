"""Jinja2 templates and the few filters they format numbers and times with."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from fastapi.templating import Jinja2Templates

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
STATIC_DIR = Path(__file__).resolve().parent / "static"
DASH = "–"


def fmt_time(value: datetime | None) -> str:
    return DASH if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def fmt_seconds(value: float | None) -> str:
    if value is None:
        return DASH
    if value < 1:
        return "<1 ms" if value < 0.0005 else f"{1000 * value:.0f} ms"
    if value >= 120:
        return f"{value / 60:.1f} min"
    return f"{value:.2f} s" if value < 10 else f"{value:.1f} s"


def fmt_percent(value: float | None) -> str:
    return DASH if value is None else f"{100 * value:.1f}%"


def fmt_number(value: object) -> str:
    if value is None:
        return DASH
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def make_templates() -> Jinja2Templates:
    templates = Jinja2Templates(directory=TEMPLATES_DIR)
    templates.env.filters.update(
        time=fmt_time, seconds=fmt_seconds, percent=fmt_percent, number=fmt_number
    )
    return templates
