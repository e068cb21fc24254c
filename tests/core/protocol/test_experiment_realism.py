"""The experiment with the realism checks on (selection.realism): what the runs draw from passed
every check, and each class's count per check is in summary.json/.md and runs.csv."""
import json
from pathlib import Path

import pandas as pd

import core.protocol.experiment as experiment
from core.config.checks import apply_overrides
from core.evaluate.selection import selection_report
from core.workspace import Workspace
from protocol_fakes import fake_generative_stages, fast


def test_the_runs_draw_only_images_that_pass_every_check_and_say_how_many_did(tmp_path, tiny_cfg, monkeypatch):
    fake_generative_stages(monkeypatch, [])
    ws = Workspace(tmp_path / "ws")
    cfg = apply_overrides(fast(tiny_cfg), ["experiment.seeds=0", "experiment.synthetic_ratios=1.0",
                                           "filter_classifier.steps=18", "downstream.steps=12",
                                           "selection.realism=knn,colour"])
    summary = experiment.run_all(ws, cfg)
    scores = pd.read_csv(ws.synthetic_scores)
    passing = scores.loc[(scores["knn_ratio"] < 1) & scores["colour_ok"] & (scores["confidence"] >= 0), "file"]
    assert 0 < len(passing) < len(scores)                  # the checks kept some and rejected some
    assert set(pd.read_csv(ws.accepted_manifest)["file"]) == set(passing)
    report = selection_report(ws, cfg)
    checks = summary["synthetic"]["checks"]["f1"]
    assert {c: n["kept"] for c, n in checks.items()} == report["kept"].to_dict()
    assert {c: n["colour"] for c, n in checks.items()} == report["colour"].to_dict()
    assert all(n["val_images"] == 6 for n in checks.values())
    aug = pd.read_csv(ws.runs_csv).query("arm == 'augmented'")
    assert json.loads(aug["selection_checks"].iloc[0]) == checks
    drawn = pd.read_csv(ws.run_synthetic(aug["run_key"].iloc[0]))
    assert set(drawn["path"].map(lambda p: "/".join(Path(p).parts[-2:]))) <= set(passing)
    md = ws.summary_md.read_text()
    assert "Selection, budget f1 (rule: threshold, realism checks: knn+colour" in md
    tumor = checks["tumor"]
    assert (f"| tumor | {tumor['images']} | {tumor['confidence']} ({tumor['val_confidence']}/6) | "
            f"{tumor['centroid']} ({tumor['val_centroid']}/6) | {tumor['knn']} ({tumor['val_knn']}/6)") in md
