"""Every real stage, no stand-ins: the tiny preset on the bundled demo in process (then a rerun,
an export and an install elsewhere), and, marked slow, the CLI end to end on the demo, on a user's
image folders and on a MedMNIST-style .npz. The grid's own rules (stage skipping, resume, top-up)
are tested with stand-in generative stages in test_experiment.py."""
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

import core.protocol.experiment as experiment
from core.config.checks import apply_overrides
from core.config.presets import preset
from core.errors import UserError
from core.evaluate.summary import main_cell
from core.workspace import Workspace
from labdata import assert_one_label_budget, image_folder

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.slow
def test_tiny_end_to_end_on_demo_data(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"}
    cmd = [sys.executable, "-m", "core", "run", "--preset", "tiny", "--workspace", str(tmp_path / "ws")]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "ws" / "results" / "summary.json").read_text())
    assert summary["synthetic"]["generated"] > 0 and len(main_cell(summary)["baseline"]["accuracy"]["runs"]) >= 2
    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0
    assert all(v == "skipped" for v in
               json.loads((tmp_path / "ws" / "results" / "summary.json").read_text())["stage_seconds"].values())


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    """Every real stage on the bundled demo with the tiny preset (fewer steps, the UNet fine-tuned
    on the budget): its workspace, config, summary and runs.csv."""
    cfg = apply_overrides(preset("tiny"), ["autoencoder.steps=6", "pretrain.steps=6", "latent_classifier.steps=6",
                                           "latent_classifier.finetune_unet=true", "latent_classifier.finetune_steps=2",
                                           "filter_classifier.steps=4", "downstream.steps=4", "sampling.num_per_class=6",
                                           "experiment.label_fractions=0.25", "experiment.topup_rounds=1"])
    ws = Workspace(tmp_path_factory.mktemp("real") / "ws")
    summary = experiment.run_all(ws, cfg)
    return SimpleNamespace(ws=ws, cfg=cfg, summary=summary, runs=pd.read_csv(ws.results_dir / "runs.csv"))


def test_real_pipeline_on_demo_data_in_process(real_run):
    ws, cfg, summary, runs = real_run.ws, real_run.cfg, real_run.summary, real_run.runs
    assert_one_label_budget(ws)
    assert set(runs.label_fraction) == {0.25}
    assert summary["synthetic"]["generated"] >= 6 * len(summary["classes"])
    main = main_cell(summary)
    assert len(main["baseline"]["accuracy"]["runs"]) == len(cfg.experiment.seeds)
    for stats in (main["baseline"], main["arms"]["selected"]["metrics"]):
        assert 0 <= stats["accuracy"]["mean"] <= 1
    assert main["arms"]["selected"]["delta"]["macro_f1"]["n"] == len(cfg.experiment.seeds)
    assert (runs[runs.arm == "selected"].n_synthetic <= summary["synthetic"]["accepted"]).all()


def test_a_rerun_of_the_real_pipeline_skips_every_stage_and_grid_run(real_run):
    """Run in the shared workspace: a rerun that passes changes nothing there."""
    again = experiment.run_all(real_run.ws, real_run.cfg)
    assert set(again["stage_seconds"].values()) == {"skipped"}
    assert pd.read_csv(real_run.ws.results_dir / "runs.csv")["seconds"].tolist() == real_run.runs["seconds"].tolist()


@pytest.fixture(scope="module")
def real_bundle(real_run, tmp_path_factory):
    """The finished real run exported as a demo bundle: its folder and export_demo's listing."""
    from core.protocol.demo_models import export_demo
    bundle = tmp_path_factory.mktemp("bundle") / "bundle"
    return SimpleNamespace(path=bundle, info=export_demo(real_run.ws, bundle))


@pytest.fixture(scope="module")
def installed(real_bundle, tmp_path_factory):
    """The bundle installed into a fresh workspace."""
    from core.protocol.demo_models import install_demo
    other = Workspace(tmp_path_factory.mktemp("installed") / "ws")
    install_demo(real_bundle.path, other)
    return other


def test_the_bundle_is_a_pipeline_folder_with_the_models_the_sampler_used(real_run, real_bundle):
    ws, info, bundle = real_run.ws, real_bundle.info, real_bundle.path
    assert "models/unet/config.json" in info["files"] and "synthetic/scores.csv" in info["files"]
    assert (ws.models_dir / "model_index.json").exists()         # the model stages' markers wrote it
    assert {"models/model_index.json", "models/README.md", "models/vae/config.json",
            "models/latent_classifier/config.json"} <= set(info["files"])   # models/ is a pipeline folder
    assert "models/unet_finetuned/config.json" in info["files"]     # what the sampler used
    # bytes stored once (each seed's arms saw the same labels)
    assert any(rel.startswith("results/runs/") for rel in info["copies"])
    assert not any((bundle / rel).exists() for rel in info["copies"])


def test_an_installed_bundle_has_the_apps_data_and_reruns_nothing(real_run, real_bundle, installed):
    """Installed elsewhere, the app's data is there (every copy laid out again) and a rerun of the
    same command skips every stage and every grid run."""
    other = installed
    assert (other.filter_classifier_dir / "model.safetensors").exists()
    for rel in real_bundle.info["copies"]:
        assert (other.root / rel).read_bytes() == (real_run.ws.root / rel).read_bytes()
    assert (other.results_dir / "summary.json").exists() and other.split_manifest.exists()
    again = experiment.run_all(other, real_run.cfg)
    redone = {k for k, v in again["stage_seconds"].items() if v != "skipped"}
    assert redone == set()
    assert main_cell(again)["baseline"]["accuracy"]["runs"] == main_cell(real_run.summary)["baseline"]["accuracy"]["runs"]


def test_install_refuses_a_workspace_that_has_models(real_bundle, installed):
    from core.protocol.demo_models import install_demo
    with pytest.raises(UserError, match="already has models"):
        install_demo(real_bundle.path, installed)


def test_install_refuses_a_damaged_bundle(real_bundle, tmp_path):
    import shutil

    from core.protocol.demo_models import install_demo
    bundle = shutil.copytree(real_bundle.path, tmp_path / "bundle")
    (bundle / "models" / "unet" / "config.json").write_text("{}")
    with pytest.raises(UserError, match="damaged or incomplete: models/unet/config.json"):
        install_demo(bundle, Workspace(tmp_path / "third"))


@pytest.mark.slow
def test_user_image_folder_with_separate_test_folder(tmp_path, tiny_cfg):
    """Another data set unchanged: 3 classes, 40 px JPEGs (resized to the preset's 32), a
    separate test folder, no unlabeled pool (the target's train images pre-train, labels unused)."""
    classes = ["adipose", "lymphocytes", "tumor"]
    train = image_folder(tmp_path / "train", classes, 12, 40, seed=0)
    test = image_folder(tmp_path / "test", classes, 5, 40, seed=1)
    (train / "tumor" / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    cfg = apply_overrides(tiny_cfg, ["autoencoder.steps=4", "pretrain.steps=4", "latent_classifier.steps=4",
                                     "filter_classifier.steps=4", "downstream.steps=4", "sampling.num_per_class=4"])
    ws = Workspace(tmp_path / "ws")
    summary = experiment.run_all(ws, cfg, labeled=train, test=test)
    assert summary["classes"] == classes
    runs = pd.read_csv(ws.results_dir / "runs.csv")
    assert (runs.n_test == 15).all()                       # the given test folder, whole
    assert {f"recall_{c}" for c in classes} <= set(runs.columns)
    pools = pd.read_csv(ws.data_dir / "pools.csv")
    splits = pd.read_csv(ws.split_manifest)
    assert pools["pool"].unique().tolist() == ["labeled_images_unlabeled"]   # train + val, labels unused
    assert set(pools.path) == set(splits[splits.split != "test"].path)
    # 4 per class from the sampling stage, more where the top-up sampled a short class again
    topup = summary["budgets"]["f1"]["topup"]
    assert summary["synthetic"]["generated"] == sum(v["generated"] for v in topup.values()) >= 4 * 3


@pytest.mark.slow
def test_cli_on_a_pathmnist_style_npz(tmp_path):
    """`python -m core run --labeled X.npz`: MedMNIST arrays (28 px, labels (N, 1)), own test split."""
    from labdata import tile
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 10), ("val", 3), ("test", 4)):
        labels = np.repeat(np.arange(3), n)
        arrays[f"{split}_images"] = np.stack([np.asarray(tile(rng, k, 28)) for k in labels])
        arrays[f"{split}_labels"] = labels[:, None]
    npz = tmp_path / "three_tissues.npz"           # not named pathmnist: classes are class_0..2
    np.savez(npz, **arrays)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"}
    cmd = [sys.executable, "-m", "core", "run", "--preset", "tiny", "--workspace", str(tmp_path / "ws"),
           "--labeled", str(npz), "--set", "autoencoder.steps=4", "--set", "pretrain.steps=4",
           "--set", "latent_classifier.steps=4", "--set", "filter_classifier.steps=4", "--set", "downstream.steps=4"]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "ws" / "results" / "summary.json").read_text())
    assert len(summary["classes"]) == 3
    assert pd.read_csv(tmp_path / "ws" / "results" / "runs.csv")["n_test"].eq(12).all()
