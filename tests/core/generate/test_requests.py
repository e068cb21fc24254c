"""Every sampling request parameter is checked once in core, before anything is converted or run:
NaN, inf, huge, negative, wrong-typed values and very long lists get one line naming the
parameter (the app's /sample, /regenerate and /grid call these functions)."""
from __future__ import annotations

import math
import time

import pytest

from core.config.requests import MAX_IMAGES, RequestError, request_fields, selection_request
from core.generate.requests import grid_request, request_from_params, sampling_request

GOOD = {"class_name": "tumor", "guidance_scale": 2.0, "steps": 3, "eta": 1.0, "seed": 5, "num_images": 2,
        "batch_size": 2}
BAD = [math.nan, math.inf, -math.inf, 1e30, -1e30, -7, 10 ** 40, "abc", [1.0] * 5000, {"x": 1}, True, None]


def _refused(call, name):
    t0 = time.perf_counter()
    with pytest.raises(RequestError) as caught:
        call()
    message = str(caught.value)
    assert time.perf_counter() - t0 < 1.0
    assert "\n" not in message and message.startswith(name), message
    return message


def test_a_good_request_passes_typed():
    req = sampling_request(**{**GOOD, "steps": 3.0, "seed": "5"})
    assert (req.steps, req.seed, req.num_images, req.eta) == (3, 5, 2, 1.0)
    assert 0 <= sampling_request(**{**GOOD, "seed": -1}).seed < 2 ** 31     # -1: a random seed


@pytest.mark.parametrize("name", [n for n in GOOD if n != "class_name"])
def test_each_sampling_parameter_refuses_nan_inf_huge_negative_and_wrong_types(name):
    for bad in [b for b in BAD if not (b is None and name == "seed")]:      # no seed: a random one
        _refused(lambda: sampling_request(**{**GOOD, name: bad}), name)
    if name == "seed":
        _refused(lambda: sampling_request(**{**GOOD, "seed": 2 ** 32}), "seed")


def test_caps_of_one_request():
    assert "at most 100" in _refused(lambda: sampling_request(**{**GOOD, "guidance_scale": 1e3}), "guidance_scale")
    _refused(lambda: sampling_request(**{**GOOD, "num_images": MAX_IMAGES + 1}), "num_images")
    _refused(lambda: sampling_request(**{**GOOD, "steps": 100000}), "steps")
    _refused(lambda: sampling_request(**{**GOOD, "class_name": "x" * 100000}), "class_name")
    _refused(lambda: sampling_request(**{**GOOD, "class_name": "stroma"}, classes=["tumor"]), "class_name")


def test_regenerate_checks_the_parameters_it_is_given():
    params = {"class": "tumor", "seed": 40, "guidance_scale": 2.0, "steps": 3, "eta": 1.0, "batch_seeds": [40, 41]}
    assert request_from_params(params).num_images == 2
    _refused(lambda: request_from_params({**params, "batch_seeds": list(range(100000))}), "batch_seeds")
    _refused(lambda: request_from_params({**params, "seed": 1e30}), "seed")
    _refused(lambda: request_from_params({**params, "eta": math.nan}), "eta")
    _refused(lambda: request_from_params({**params, "guidance_scale": math.inf}), "guidance_scale")
    _refused(lambda: request_from_params({**params, "steps": math.nan}), "steps")
    _refused(lambda: request_from_params([1, 2]), "params")
    _refused(lambda: request_from_params({"seed": 1}), "params")


def test_grid_refuses_long_lists_and_unbounded_scales():
    known = ["tumor", "stroma"]
    ok = grid_request(["tumor"], "0, 2.5", 3, 2, 1.0, known)
    assert (ok["classes"], ok["scales"], ok["seed"]) == (["tumor"], [0.0, 2.5], 3)
    assert grid_request([], "1", 3, 2, 1.0, known)["classes"] == known
    _refused(lambda: grid_request(known, ", ".join(["1"] * 5000), 0, 2, 1.0, known), "guidance scales")
    _refused(lambda: grid_request(known, "inf", 0, 2, 1.0, known), "guidance scales")
    _refused(lambda: grid_request(known, "1e30", 0, 2, 1.0, known), "guidance scales")
    _refused(lambda: grid_request(["tumor"] * 5000, "1", 0, 2, 1.0, known), "classes")
    _refused(lambda: grid_request(["nope"], "1", 0, 2, 1.0, known), "classes[0]")
    _refused(lambda: grid_request(known, "1", 0, 2, math.nan, known), "eta")
    _refused(lambda: grid_request(known, "1", 1e30, 2, 1.0, known), "seed")


def test_pretraining_fields_refuse_nan_inf_huge_and_wrong_types():
    """The app's /pretrain_start and /pretrain_fresh send these fields (app.tab_pretrain)."""
    good = {"steps": 7.0, "batch_size": 3, "lr": 0.002, "checkpoint_every": 5, "sample_every": 6}
    assert request_fields("pretrain", good) == {**good, "steps": 7}
    for name in good:
        for bad in (math.nan, math.inf, 1e30, -1, "abc", [1] * 5000, None):
            _refused(lambda: request_fields("pretrain", {**good, name: bad}), name)
    _refused(lambda: request_fields("pretrain", {**good, "nope": 1}), "nope")


def test_the_selection_rule_of_a_request():
    """The app's /refilter and /export_accepted send these (app.tab_selection)."""
    assert selection_request(0.5, "threshold", 0.0, ["knn"]) == (0.5, "threshold", 0, ("knn",))
    assert selection_request(0.5, "centroid", 3)[3] is None            # the config's checks
    for bad in (math.nan, math.inf, 1e30, -1, "abc", [0.5] * 5000, None):
        _refused(lambda: selection_request(bad, "threshold", 0), "threshold")
        _refused(lambda: selection_request(0.5, "threshold", bad), "quota")
    _refused(lambda: selection_request(0.5, "nope", 0), "strategy")
    _refused(lambda: selection_request(0.5, "threshold", 0, ["knn"] * 5000), "realism")
    _refused(lambda: selection_request(0.5, "threshold", 0, ["nope"]), "realism")
