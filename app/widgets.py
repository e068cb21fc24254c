"""Widget bounds from the config's declarations: a slider or number box offers what the field
accepts (core.config.field_range / choices), so the UI and `--set` never disagree.

The input widgets here hand their handler the value exactly as the request sent it. Gradio's own
preprocessing rounds a number box to int before the handler runs (NaN became an anonymous
`{"error": null}`, True became 1), fails with no message on a string or a list, and answers a
wrong choice by echoing it whole (100,000 characters for a long one). Every handler checks its
parameters with core.config.requests instead: one validation, one line naming the parameter."""
from __future__ import annotations

import math
from typing import Any

import gradio as gr

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



def _as_sent(widget):
    """`widget` whose handler gets the request's value as sent (set on the instance: a Gradio
    component subclass would make Gradio write a .pyi file beside this module at import)."""
    widget.preprocess = lambda payload: payload
    return widget


def number(*args, **kwargs) -> gr.Number:
    return _as_sent(gr.Number(*args, **kwargs))


def slider(*args, **kwargs) -> gr.Slider:
    return _as_sent(gr.Slider(*args, **kwargs))


def dropdown(*args, **kwargs) -> gr.Dropdown:
    return _as_sent(gr.Dropdown(*args, **kwargs))


def radio(*args, **kwargs) -> gr.Radio:
    return _as_sent(gr.Radio(*args, **kwargs))


def checkbox_group(*args, **kwargs) -> gr.CheckboxGroup:
    return _as_sent(gr.CheckboxGroup(*args, **kwargs))
