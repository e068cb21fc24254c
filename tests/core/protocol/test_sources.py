"""A workspace remembers the data it was made from: a run without --labeled goes on with it, and
other data in a workspace with models needs --switch-data, which archives them first."""
from __future__ import annotations

import json

import numpy as np
import pytest

import core.protocol.experiment as experiment
from core.__main__ import main
from core.errors import UserError
from core.protocol.stages import read_marker
from core.workspace import Workspace
from labdata import tile


def _folder(root, classes, seed):
    rng = np.random.default_rng(seed)
    for label, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(12):
            tile(rng, label, 32).save(root / name / f"{name}_{i}.png")
    return root


@pytest.fixture
def until_autoencoder(monkeypatch):
    """The real data stage, then a stop where training would begin (the models are stand-ins)."""
    real = experiment.stage_functions

    def stages(labeled, test, unlabeled):
        out = real(labeled, test, unlabeled)
        out["autoencoder"] = lambda ws, cfg, progress=None, stop=None: {"stopped": True}
        return out
    monkeypatch.setattr(experiment, "stage_functions", stages)


def test_a_run_without_labeled_goes_on_with_the_workspaces_own_data(tmp_path, tiny_cfg, until_autoencoder, capsys):
    mine = _folder(tmp_path / "mine", ["adipose", "tumor"], 0)
    other = _folder(tmp_path / "other", ["mucus", "stroma"], 1)
    ws = Workspace(tmp_path / "ws")
    assert experiment.run_all(ws, tiny_cfg, labeled=mine) == {"stopped": True, "stage": "autoencoder"}
    splits, data_marker = ws.split_manifest.read_text(), read_marker(ws, "data")
    ws.autoencoder_dir.mkdir(parents=True)
    (ws.autoencoder_dir / "config.json").write_text("{}")          # a model trained on my data
    # no --labeled: my data again, the data stage done, no demo built, the model untouched
    assert experiment.run_all(ws, tiny_cfg) == {"stopped": True, "stage": "autoencoder"}
    assert ws.split_manifest.read_text() == splits and read_marker(ws, "data") == data_marker
    assert not ws.demo_data_marker.exists() and (ws.autoencoder_dir / "config.json").exists()
    assert json.loads(ws.data_sources_file.read_text())["labeled"] == str(mine)
    # other data: refused in one line naming both and the flag; nothing moved
    assert main(["run", "--workspace", str(ws.root), "--preset", "tiny", "--labeled", str(other)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--switch-data" in err[0] and str(mine) in err[0] and str(other) in err[0]
    with pytest.raises(UserError, match="--switch-data"):
        experiment.run_all(ws, tiny_cfg, labeled=other)
    assert ws.split_manifest.read_text() == splits and (ws.autoencoder_dir / "config.json").exists()
    # with the flag: the old models are archived first, never overwritten
    experiment.run_all(ws, tiny_cfg, labeled=other, switch_data=True)
    assert len(list((ws.root / "archive").glob("data-*/models/vae/config.json"))) == 1
    assert not ws.models_dir.exists()
    assert json.loads(ws.classes_file.read_text()) == ["mucus", "stroma"]


def test_a_workspace_older_than_its_sources_file_is_never_rebuilt_as_the_demo(tmp_path, tiny_cfg, until_autoencoder):
    """Made from user data before data/sources.json existed: a run without --labeled names the
    folder it was made from instead of building the demo over it; with it, it goes on."""
    mine = _folder(tmp_path / "mine", ["adipose", "tumor"], 0)
    ws = Workspace(tmp_path / "ws")
    experiment.run_all(ws, tiny_cfg, labeled=mine)
    ws.data_sources_file.unlink()
    ws.autoencoder_dir.mkdir(parents=True)
    (ws.autoencoder_dir / "config.json").write_text("{}")
    with pytest.raises(UserError, match=f"made from {mine}.*--labeled {mine}"):
        experiment.run_all(ws, tiny_cfg)
    assert experiment.run_all(ws, tiny_cfg, labeled=mine)["stage"] == "autoencoder"
    assert (ws.autoencoder_dir / "config.json").exists() and not ws.demo_data_marker.exists()
