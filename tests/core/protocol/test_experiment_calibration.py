"""The experiment under per-class calibrated thresholds (selection.calibration=validation)."""
from pathlib import Path

import pandas as pd

import core.protocol.experiment as experiment
from core.config.checks import apply_overrides
from core.workspace import Workspace
from protocol_fakes import fake_generative_stages, fast


def test_calibrated_thresholds_decide_the_accepted_set_and_are_reported(tmp_path, tiny_cfg, monkeypatch):
    """selection.calibration=validation: the selection stage, the top-up and the grid draw from
    what each class's calibrated threshold accepts, and summary.json/.md say which thresholds,
    from how many validation images."""
    fake_generative_stages(monkeypatch, [])
    ws = Workspace(tmp_path / "ws")
    cfg = apply_overrides(fast(tiny_cfg), ["experiment.seeds=0", "experiment.synthetic_ratios=1.0",
                                           "filter_classifier.steps=18", "downstream.steps=18", "selection.threshold=0.99",
                                           "selection.calibration=validation"])
    summary = experiment.run_all(ws, cfg)
    table = pd.read_csv(ws.selection_thresholds)
    bars = dict(zip(table["class"], table["threshold"]))
    assert table["n_val_images"].tolist() == [6, 6] and min(bars.values()) < 0.99   # calibration moved a bar
    scores = pd.read_csv(ws.synthetic_scores)
    passing = scores.loc[scores["confidence"] >= scores["class"].map(bars), "file"]
    assert set(pd.read_csv(ws.accepted_manifest)["file"]) == set(passing)
    assert len(passing) > (scores["confidence"] >= 0.99).sum()
    cal = summary["budgets"]["f1"]["calibration"]
    assert cal["n_val_images"] == 12 and {c: v["threshold"] for c, v in cal["per_class"].items()} == bars
    assert {c: v["threshold"] for c, v in summary["budgets"]["f1"]["topup"].items()} == bars
    assert {c: v["threshold"] for c, v in summary["synthetic"]["per_class"].items()} == bars
    aug = pd.read_csv(ws.runs_csv).query("arm == 'selected'")
    drawn = pd.read_csv(ws.run_synthetic(aug["run_key"].iloc[0]))
    assert set(drawn["path"].map(lambda p: "/".join(Path(p).parts[-2:]))) <= set(passing)
    text = ws.summary_md.read_text()
    assert "## Per-class thresholds" in text and all(f"| f1 | {c} | {t:.3f} |" in text for c, t in bars.items())
