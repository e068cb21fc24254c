"""Installing the demo bundle is one unit: only listed files, a killed install repaired at the
next start, stale temp folders removed, and paths stored relative to the workspace."""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pandas as pd
import pytest

from core.protocol.demo_models import install_demo, install_state
from core.workspace import Workspace

BUNDLE = Path(__file__).resolve().parents[3] / "assets" / "demo_models"


@pytest.fixture
def bundle(tmp_path):
    """A copy of the bundled demo models (64 MB) to plant things in."""
    return Path(shutil.copytree(BUNDLE, tmp_path / "bundle"))


def test_only_the_files_the_bundle_lists_are_installed(bundle, tmp_path):
    (bundle / "results" / "unlisted.html").write_text("<script>alert(1)</script>")
    (bundle / "models" / "unet" / "extra.safetensors").write_bytes(b"not listed")
    ws = Workspace(tmp_path / "ws")
    install_demo(bundle, ws, build_data=False)
    assert not (ws.results_dir / "unlisted.html").exists() and not (ws.unet_dir / "extra.safetensors").exists()
    listed = set(json.loads((bundle / "bundle.json").read_text())["files"])
    assert (ws.results_dir / "summary.json").exists() and "results/summary.json" in listed
    assert install_state(ws) == "installed"


def test_stale_temp_folders_of_a_killed_export_are_removed(tmp_path):
    """A temp folder whose process is gone (and one of the older, pid-less naming once an hour
    old) is removed by the next write of the same folder; a live process's is kept."""
    from core.io import atomic_dir
    target = tmp_path / "bundle"
    dead = tmp_path / f".bundle.{2 ** 22 + 12345}.abcd1234.tmp"      # above any pid this machine gave
    live = tmp_path / f".bundle.{os.getpid()}.efgh5678.tmp"
    old = tmp_path / ".bundle.x1y2z3w4.tmp"
    for folder in (dead, live, old):
        folder.mkdir()
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("a")
    assert not dead.exists() and not old.exists() and live.exists() and (target / "a.txt").exists()


def test_paths_are_stored_relative_to_the_workspace_and_hash_as_before(tmp_path):
    """The installed demo's tables name its own files (not the build machine's), and a data table
    stored the old way (absolute paths) hashes as the new (relative) one, so markers hold."""
    from core.protocol.stages import output_hash
    ws = Workspace(tmp_path / "ws")
    install_demo(BUNDLE, ws)
    source = json.loads((BUNDLE / "bundle.json").read_text())["source_workspace"]
    for table in [*ws.root.rglob("*.csv"), *ws.root.rglob("stages/*.json")]:
        assert source not in table.read_text(), table
    labels = pd.read_csv(ws.labels_file)
    assert not labels["path"].str.startswith("/").any()
    assert all((ws.root / p).exists() for p in labels["path"])
    new = output_hash(ws, "data")
    ws = Workspace(shutil.move(str(ws.root), str(tmp_path / "moved")))
    assert output_hash(ws, "data") == new
    for table in (ws.split_manifest, ws.pools_file):
        frame = pd.read_csv(table)
        frame["path"] = [str(ws.root / p) for p in frame["path"]]       # as tables were written before
        frame.to_csv(table, index=False)
    assert output_hash(ws, "data") == new
