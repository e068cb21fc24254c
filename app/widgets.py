"""Widget bounds from the config's declarations: a slider or number box offers what the field
accepts (core.config.field_range / choices), so the UI and `--set` never disagree."""
from __future__ import annotations

import math
from typing import Any

from core.config.checks import choices, field_range


def bounds(section: Any, name: str, cap: float | None = None) -> dict[str, float | None]:
    """{"minimum", "maximum"} for a gr.Number / gr.Slider showing field `name` of config section
    `section` (an instance): an open end moves in by one for an int field (none for a float, as
    a box cannot say "above 0"); an infinite end is None, or `cap` (a slider needs an end)."""
    r = field_range(section, name)
    whole = isinstance(getattr(section, name), int)
    lo = r.lo + 1 if r.lo_open and whole else r.lo
    hi = r.hi - 1 if r.hi_open and whole and math.isfinite(r.hi) else r.hi
    if cap is not None:
        hi = min(hi, cap)
    return {"minimum": _plain(lo), "maximum": None if math.isinf(hi) else _plain(hi)}


def options(section: Any, name: str) -> list:
    """The values a choice field allows, for a gr.Radio / gr.Dropdown."""
    return list(choices(section, name) or ())


def _plain(x: float) -> float | int:
    return int(x) if float(x).is_integer() else x
