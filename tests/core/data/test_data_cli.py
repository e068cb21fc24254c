"""`python -m core data ...`: check reports every bad file and exits 0; empty folder exits 2."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from core.commands.data import cli
from image_files import make_bad_folder

ROOT = Path(__file__).resolve().parents[3]


def test_check_lists_every_bad_kind_with_reason_and_exits_0(tmp_path, capsys):
    expected = make_bad_folder(tmp_path / "data" / "ADI")
    (tmp_path / "data" / "EMPTY").mkdir()
    assert cli(["check", str(tmp_path / "data"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    ok = [n for n, v in expected.items() if v == "ok"]
    assert report["classes"] == {"ADI": len(ok), "EMPTY": 0}
    assert report["empty_classes"] == ["EMPTY"]
    reasons = {Path(s["path"]).name: s["reason"] for s in report["skipped"]}
    for name, fragment in expected.items():
        if fragment != "ok":
            assert fragment in reasons[name]
    assert cli(["check", str(tmp_path / "data")]) == 0           # human form names them too
    text = capsys.readouterr().out
    assert "truncated.png: unreadable" in text and "EMPTY" in text and "tiny.png: too small" in text


def test_check_empty_folder_is_an_error_naming_the_path(tmp_path):
    empty = tmp_path / "nothing here"
    empty.mkdir()
    run = subprocess.run([sys.executable, "-m", "core", "data", "check", str(empty)],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and str(empty) in run.stderr and "no usable images" in run.stderr


def test_prepare_and_demo_commands(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for cls in ("ADI", "TUM"):
        (tmp_path / "nct" / cls).mkdir(parents=True)
        for i in range(10):
            Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(
                tmp_path / "nct" / cls / f"{cls}-{i}.tif")
    ws = tmp_path / "ws"
    assert cli(["prepare", "--workspace", str(ws), "--preset", "tiny", "--labeled", str(tmp_path / "nct"),
                "--set", "data.val_fraction=0.25",
                "--unlabeled", f"{ROOT / 'assets' / 'ihc.png'}:2"]) == 0
    out = capsys.readouterr().out
    assert "carved as test" in out and "ihc" in out
    frame = (ws / "data" / "splits.csv").read_text().splitlines()
    assert frame[0] == "path,label,class_name,split" and len(frame) - 1 == 20     # the whole labeled pool
    assert sum(",val" in line for line in frame) == 4                               # 25% of 16 non-test
    assert json.loads((ws / "config.json").read_text())["data"]["val_fraction"] == 0.25
    assert cli(["demo", "--workspace", str(tmp_path / "demo_ws"), "--preset", "tiny"]) == 0
    assert "demo data built" in capsys.readouterr().out
    assert cli(["demo", "--workspace", str(tmp_path / "demo_ws")]) == 0            # tiny from config.json
    assert "up to date" in capsys.readouterr().out
    assert cli(["prepare", "--workspace", str(ws), "--labeled", str(tmp_path / "missing")]) == 2


def test_a_decompression_bomb_is_skipped_and_the_check_and_prepare_go_on(tmp_path, capsys):
    """`data check` and the labeled data stage skip a 30000 x 30000 PNG with its reason (no
    traceback, exit 0) and index the rest; the cap is data.max_image_pixels."""
    from core.config.presets import preset
    from core.data.labeled import prepare_labeled
    from core.workspace import Workspace
    from image_files import bomb_png, he_array
    for cls in ("A", "B"):
        (tmp_path / "lab" / cls).mkdir(parents=True)
        for k in range(6):
            Image.fromarray(np.roll(he_array(32, 32), k, axis=1)).save(tmp_path / "lab" / cls / f"{k}.png")
    bomb_png(tmp_path / "lab" / "A" / "bomb.png", 30000)
    assert cli(["check", str(tmp_path / "lab")]) == 0
    out = capsys.readouterr().out
    assert "bomb.png: too large: 900,000,000 pixels is over data.max_image_pixels" in out and "A" in out
    assert cli(["check", str(tmp_path / "lab"), "--json", "--set", "data.max_image_pixels=1000"]) == 2
    assert "no usable images" in capsys.readouterr().err          # the cap is the config's
    result = prepare_labeled(Workspace(tmp_path / "ws"), preset("tiny"), tmp_path / "lab")
    assert [Path(s["path"]).name for s in result["skipped"]] == ["bomb.png"]
    assert "too large" in result["skipped"][0]["reason"]
