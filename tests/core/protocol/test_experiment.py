import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import core.protocol.experiment as experiment
from core.protocol.stages import PIPELINE
from core.commands import run as run_cmd
from core.errors import UserError
from core.config.checks import apply_overrides
from core.config.store import config_hash as cfg_hash
from core.evaluate.summary import main_cell
from core.workspace import Workspace
from labdata import assert_one_label_budget, make_splits, make_synthetic
from protocol_fakes import fake_generative_stages, fast

ROOT = Path(__file__).resolve().parents[3]


def test_stages_skip_by_hash_and_grid_resumes(tmp_path, tiny_cfg, monkeypatch):
    calls = []
    fake_generative_stages(monkeypatch, calls)
    ws = Workspace(tmp_path / "ws")
    cfg = fast(tiny_cfg)
    summary = experiment.run_all(ws, cfg)
    assert calls == list(PIPELINE)
    runs = pd.read_csv(ws.results_dir / "runs.csv")
    assert len(runs) == 3 * (1 + 2)                     # seeds x (baseline + 2 ratios)
    assert set(runs.arm) == {"baseline", "selected"}
    aug = runs[runs.arm == "selected"]
    assert (aug.n_synthetic == (aug.synthetic_ratio * aug.n_real).round()).all()
    assert {"recall_tumor", "recall_stroma", "macro_f1", "balanced_accuracy"} <= set(runs.columns)
    # equal real exposure, said per run: every arm of a seed took its baseline's real batches
    for seed, rows in runs.groupby("seed"):
        assert rows["real_sequence"].nunique() == 1 and rows["real_views_per_image"].nunique() == 1
    assert (aug.added_share > 0).all() and (runs[runs.arm == "baseline"].added_share == 0).all()
    assert summary["classes"] == ["tumor", "stroma"]
    main = main_cell(summary)
    assert len(main["baseline"]["accuracy"]["runs"]) == 3
    delta = main["arms"]["selected"]["delta"]["accuracy"]
    assert delta["n"] == 3 and delta["low"] is not None and delta["mde"] is not None
    assert main["arms"]["selected"]["real_batches_match_baseline"] is True
    assert summary["synthetic"]["generated"] == 24
    saved = json.loads((ws.results_dir / "summary.json").read_text())
    assert main_cell(saved)["arms"]["selected"]["metrics"]["macro_f1"]["mean"] == \
        pytest.approx(main["arms"]["selected"]["metrics"]["macro_f1"]["mean"])
    assert saved["config"]["downstream"]["steps"] == 6
    assert (runs.steps == 6).all()                      # equal compute: every arm, every ratio
    assert saved["status"] == "complete" and saved["label_subsets"].startswith("one labeled subset")
    quality = saved["quality"]["f1"]          # the accepted images the runs drew from, with floors
    assert quality["features"] and set(quality["per_class"]) == {"tumor", "stroma"}
    assert all("fd" in m["floor"] for m in quality["per_class"].values())
    assert "Quality of the accepted images" in (ws.results_dir / "summary.md").read_text()
    assert (ws.stages_dir / "pretrain.json").exists()

    # same config: nothing reruns, no run is retrained (runs.csv rows are reused)
    calls.clear()
    mtime = os.path.getmtime(ws.filter_classifier_dir / "model.safetensors")
    experiment.run_all(ws, cfg)
    assert calls == []
    assert os.path.getmtime(ws.filter_classifier_dir / "model.safetensors") == mtime
    assert pd.read_csv(ws.results_dir / "runs.csv")["seconds"].tolist() == runs["seconds"].tolist()

    # images the app adds at another guidance scale (manifest + scores rows) are not this
    # config's: nothing goes stale, no run is retrained
    for table in ("manifest.csv", "scores.csv"):
        frame = pd.read_csv(ws.synthetic_dir / table)
        extra_row = frame.iloc[:1].assign(file="tumor/tumor-seed5-s7.png", guidance_scale=7.0)
        pd.concat([frame, extra_row]).to_csv(ws.synthetic_dir / table, index=False)
    calls.clear()
    experiment.run_all(ws, cfg)
    assert calls == []
    assert pd.read_csv(ws.results_dir / "runs.csv")["seconds"].tolist() == runs["seconds"].tolist()

    # a sampling change reruns sampling and what reads it, not the models before it
    calls.clear()
    other = experiment.run_all(ws, apply_overrides(cfg, ["sampling.guidance_scale=3.0"]))
    assert calls == ["sampling", "scoring", "selection"]
    # ...but the manifest holds no image made at guidance 3: none is used, and the runs are redone
    assert other["synthetic"]["generated"] == 0
    assert (pd.read_csv(ws.results_dir / "runs.csv")["n_synthetic"] == 0).all()

    # a damaged marker reruns that stage (its rewritten outputs hash the same, so nothing after
    # it reruns for that); sampling and what reads it rerun because the config went back to
    # guidance 10
    calls.clear()
    (ws.stages_dir / "autoencoder.json").write_text("{ not json")
    experiment.run_all(ws, cfg)
    assert calls == ["autoencoder", "sampling", "scoring", "selection"]
    # the guidance-10 runs came back from the archive instead of being retrained
    assert pd.read_csv(ws.results_dir / "runs.csv")["seconds"].tolist() == runs["seconds"].tolist()
    assert len(pd.read_csv(ws.results_dir / "runs_other_configs.csv")) == len(runs)


def test_competitor_arms_share_seeds_steps_real_batches_and_counts(tmp_path, tiny_cfg, monkeypatch):
    """Every arm of the grid at a half budget: per seed each arm trains on the baseline's real
    batches for the same steps and adds the selected arm's count per class (pseudo-labels from
    the label-hidden half of the labeled pool); runs.csv and the summary say so per arm."""
    fake_generative_stages(monkeypatch, [])
    ws = Workspace(tmp_path / "ws")
    cfg = apply_overrides(fast(tiny_cfg), ["experiment.label_fractions=0.5", "experiment.synthetic_ratios=1.0",
                                           "experiment.seeds=0,1",
                                           "experiment.arms=selected,unselected,pseudo,selected+pseudo"])
    summary = experiment.run_all(ws, cfg)
    runs = pd.read_csv(ws.results_dir / "runs.csv")
    assert sorted(runs.arm.unique()) == ["baseline", "pseudo", "selected", "selected+pseudo", "unselected"]
    assert (runs.steps == cfg.downstream.steps).all()
    for seed, rows in runs.groupby("seed"):
        by = rows.set_index("arm")
        assert rows["real_sequence"].nunique() == 1 and rows["real_batch"].nunique() == 1
        k = by.loc["selected", "n_synthetic"]
        assert k == 12 and by.loc["unselected", "n_synthetic"] == k and by.loc["pseudo", "n_pseudo"] == k
        assert (by.loc["selected+pseudo", "n_synthetic"], by.loc["selected+pseudo", "n_pseudo"]) == (k, k)
        assert by.loc["pseudo", "n_synthetic"] == 0 and 0 <= by.loc["pseudo", "pseudo_label_accuracy"] <= 1
        drawn = pd.read_csv(ws.run_synthetic(by.loc["pseudo", "run_key"]))
        budget = pd.read_csv(ws.labels_file)
        splits = pd.read_csv(ws.split_manifest)
        assert not drawn["path"].isin(budget["path"]).any()          # label-hidden images only
        assert drawn["path"].isin(splits[splits.split != "test"]["path"]).all()
    arms = main_cell(summary)["arms"]
    assert set(arms) == {"selected", "unselected", "pseudo", "selected+pseudo"}
    assert all(a["real_batches_match_baseline"] and a["delta"]["accuracy"]["n"] == 2 for a in arms.values())
    text = (ws.results_dir / "summary.md").read_text()
    assert all(f"| {arm} |" in text for arm in arms)


def test_killed_grid_resumes_where_it_stopped(tmp_path, tiny_cfg, monkeypatch):
    calls = []
    fake_generative_stages(monkeypatch, calls)
    ws = Workspace(tmp_path / "ws")
    cfg = apply_overrides(fast(tiny_cfg), ["experiment.synthetic_ratios=1.0", "experiment.seeds=0,1"])
    stop = threading.Event()
    finished = []

    def progress(p):
        if p.get("stage") == "experiment" and p.get("run", 0) >= 2:
            finished.append(p["run"])
            stop.set()                      # stop inside the 2nd grid run
    out = experiment.run_all(ws, cfg, progress=progress, stop=stop)
    assert out["stopped"] is True and out["runs_done"] == 1
    assert len(pd.read_csv(ws.results_dir / "runs.csv")) == 1
    # the summary on disk describes this config's finished run, marked partial
    partial = json.loads((ws.results_dir / "summary.json").read_text())
    assert partial["status"] == "partial: 1 of 4 runs" and partial["config_hash"] == cfg_hash(cfg)
    assert "partial: 1 of 4 runs" in (ws.results_dir / "summary.md").read_text()
    calls.clear()
    summary = experiment.run_all(ws, cfg)
    assert calls == []                      # every stage was finished before the stop
    runs = pd.read_csv(ws.results_dir / "runs.csv")
    assert len(runs) == 4 and summary["runs"] == 4 and summary["status"] == "complete"
    text = pd.read_csv(ws.results_dir / "runs.csv", dtype=str)        # counts stay integers on resume
    for col in ("seed", "n_real", "n_synthetic", "steps", "n_test"):
        assert not text[col].str.contains(".", regex=False).any(), (col, text[col].tolist())


def test_draw_synthetic_keeps_real_class_prior():
    real = pd.DataFrame({"path": [f"r{i}" for i in range(10)], "label": [0] * 8 + [1] * 2})
    acc = pd.DataFrame({"path": [f"s{i}" for i in range(40)], "label": [0] * 20 + [1] * 20})
    out, report = experiment.draw_synthetic(acc, real, 1.0, seed=0)
    assert out["label"].value_counts().to_dict() == {0: 8, 1: 2}
    capped, report = experiment.draw_synthetic(acc, real, 3.0, seed=0)
    assert capped["label"].value_counts().to_dict() == {0: 20, 1: 6}     # class 0 capped at 20
    assert report == {0: {"wanted": 24, "drawn": 20, "accepted": 20}, 1: {"wanted": 6, "drawn": 6, "accepted": 20}}
    assert experiment.draw_synthetic(acc.iloc[:0], real, 1.0, 0)[0].empty


def test_cli_rejects_test_without_labeled(tmp_path):
    assert run_cmd.cli(["--workspace", str(tmp_path), "--preset", "tiny", "--test", str(tmp_path)]) == 2


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


def test_real_pipeline_on_demo_data_in_process(tmp_path, tiny_cfg):
    """Every real stage on the bundled demo with the tiny preset (fewer steps, the UNet
    fine-tuned on the budget), then a rerun that skips every stage and every grid run; the same
    of the run bundled and installed elsewhere."""
    cfg = apply_overrides(tiny_cfg, ["autoencoder.steps=6", "pretrain.steps=6", "latent_classifier.steps=6",
                                     "latent_classifier.finetune_unet=true", "latent_classifier.finetune_steps=2",
                                     "filter_classifier.steps=4", "downstream.steps=4", "sampling.num_per_class=6",
                                     "experiment.label_fractions=0.25", "experiment.topup_rounds=1"])
    ws = Workspace(tmp_path / "ws")
    summary = experiment.run_all(ws, cfg)
    assert_one_label_budget(ws)
    assert set(pd.read_csv(ws.results_dir / "runs.csv").label_fraction) == {0.25}
    assert summary["synthetic"]["generated"] >= 6 * len(summary["classes"])
    main = main_cell(summary)
    assert len(main["baseline"]["accuracy"]["runs"]) == len(cfg.experiment.seeds)
    for stats in (main["baseline"], main["arms"]["selected"]["metrics"]):
        assert 0 <= stats["accuracy"]["mean"] <= 1
    assert main["arms"]["selected"]["delta"]["macro_f1"]["n"] == len(cfg.experiment.seeds)
    runs = pd.read_csv(ws.results_dir / "runs.csv")
    assert (runs[runs.arm == "selected"].n_synthetic <= summary["synthetic"]["accepted"]).all()
    again = experiment.run_all(ws, cfg)
    assert set(again["stage_seconds"].values()) == {"skipped"}
    assert pd.read_csv(ws.results_dir / "runs.csv")["seconds"].tolist() == runs["seconds"].tolist()
    # bundle the finished run and install it elsewhere: the app's data is there and a rerun
    # of the same command skips every stage and every grid run
    from core.protocol.demo_models import export_demo, install_demo
    bundle = tmp_path / "bundle"
    info = export_demo(ws, bundle)
    assert "models/unet/config.json" in info["files"] and "synthetic/scores.csv" in info["files"]
    assert (ws.models_dir / "model_index.json").exists()         # the model stages' markers wrote it
    assert {"models/model_index.json", "models/README.md", "models/vae/config.json",
            "models/latent_classifier/config.json"} <= set(info["files"])   # models/ is a pipeline folder
    assert "models/unet_finetuned/config.json" in info["files"]     # what the sampler used
    other = Workspace(tmp_path / "installed")
    install_demo(bundle, other)
    assert (other.filter_classifier_dir / "model.safetensors").exists()
    # bytes stored once (each seed's arms saw the same labels), every copy laid out again on install
    assert any(rel.startswith("results/runs/") for rel in info["copies"])
    assert not any((bundle / rel).exists() for rel in info["copies"])
    for rel in info["copies"]:
        assert (other.root / rel).read_bytes() == (ws.root / rel).read_bytes()
    assert (other.results_dir / "summary.json").exists() and other.split_manifest.exists()
    again = experiment.run_all(other, cfg)
    redone = {k for k, v in again["stage_seconds"].items() if v != "skipped"}
    assert redone == set()
    assert main_cell(again)["baseline"]["accuracy"]["runs"] == main["baseline"]["accuracy"]["runs"]
    with pytest.raises(UserError, match="already has models"):
        install_demo(bundle, other)
    (bundle / "models" / "unet" / "config.json").write_text("{}")
    with pytest.raises(UserError, match="damaged or incomplete: models/unet/config.json"):
        install_demo(bundle, Workspace(tmp_path / "third"))


def _user_image_folder(root, classes, per_class, size, seed):
    rng = np.random.default_rng(seed)
    from labdata import tile
    for label, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            tile(rng, label, size).save(root / name / f"{name}_{i}.jpg", quality=95)
    return root


@pytest.mark.slow
def test_user_image_folder_with_separate_test_folder(tmp_path, tiny_cfg):
    """Another data set unchanged: 3 classes, 40 px JPEGs (resized to the preset's 32), a
    separate test folder, no unlabeled pool (the target's train images pre-train, labels unused)."""
    classes = ["adipose", "lymphocytes", "tumor"]
    train = _user_image_folder(tmp_path / "train", classes, 12, 40, seed=0)
    test = _user_image_folder(tmp_path / "test", classes, 5, 40, seed=1)
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


def test_short_classes_are_topped_up_and_what_cannot_be_is_reported(tmp_path, tiny_cfg, monkeypatch):
    """A class whose generator gives good images is topped up to its want; one whose generator
    never gives an acceptable image is sampled for every round and then reported short."""
    import core.generate.sampling as sampling
    from core.train.filter_classifier import train_filter_classifier
    from core.io import folder_hash, save_png
    from core.evaluate.selection import score_synthetic
    from core.protocol.topup import top_up
    from labdata import tile
    ws = Workspace(tmp_path / "ws").ensure()
    make_splits(ws)
    cfg = apply_overrides(fast(tiny_cfg), ["filter_classifier.steps=18", "downstream.steps=18", "selection.threshold=0.5",
                                           "sampling.num_per_class=4", "experiment.topup_rounds=2"])
    for folder in (ws.unet_dir, ws.autoencoder_dir, ws.latent_classifier_dir):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text("{}")
    make_synthetic(ws, per_class=4)              # 2 good + 2 wrong-colour images per class
    train_filter_classifier(ws, cfg)
    score_synthetic(ws, cfg)
    made = []

    def fake_generate(ws_, cfg_, class_name, num, seed, progress=None, stop=None, **_):
        label = ["tumor", "stroma"].index(class_name)
        drawn = label if class_name == "tumor" else 0          # stroma never comes out right
        rng, rows = np.random.default_rng(seed), []
        for sd in range(seed, seed + num):
            row = {"file": f"{class_name}/{class_name}-seed{sd}.png", "class": class_name, "label": label,
                   "seed": sd, "guidance_scale": cfg_.sampling.guidance_scale, "steps": cfg_.sampling.steps,
                   "scheduler": cfg_.sampling.sampler, "eta": cfg_.sampling.eta,
                   "unet_hash": folder_hash(ws_.unet_dir), "vae_hash": folder_hash(ws_.autoencoder_dir),
                   "classifier_hash": folder_hash(ws_.latent_classifier_dir)}
            save_png(tile(rng, drawn), ws_.synthetic_dir / row["file"], row)
            rows.append(row)
        pd.concat([pd.read_csv(ws_.synthetic_dir / "manifest.csv"), pd.DataFrame(rows)]) \
            .to_csv(ws_.synthetic_dir / "manifest.csv", index=False)
        made.append((class_name, seed, num))
        return rows
    monkeypatch.setattr(sampling, "generate_images", fake_generate)
    out = top_up(ws, cfg, {0: 6, 1: 6}, ["tumor", "stroma"])
    tumor, stroma = out["per_class"]["tumor"], out["per_class"]["stroma"]
    assert tumor["accepted"] >= 6 and tumor["rounds"] == 1            # one round was enough
    assert stroma["accepted"] < 6 and stroma["rounds"] == 2 and stroma["generated"] == 4 + 4 + 4
    assert [m for m in made if m[0] == "stroma"] == [("stroma", 1 * 1_000_000 + 4, 4), ("stroma", 1_000_000 + 8, 4)]
    # the draw then delivers tumor's ratio and says stroma's shortfall per class
    from core.evaluate.summary import _shortfall
    from core.protocol.topup import accepted_images
    real = pd.read_csv(ws.split_manifest).query("split == 'train'")
    _, report = experiment.draw_synthetic(accepted_images(ws, cfg), real, 0.5, seed=0)
    assert report[0]["drawn"] == 6 and report[1]["drawn"] < 6
    text = _shortfall({"tumor": report[0], "stroma": report[1]}, 0.5, 2)
    assert text.startswith("ratio 0.5 not met for 1 class(es)") and "stroma:" in text and "tumor" not in text
    # a rerun finds every top-up image done and adds nothing
    made.clear()
    assert top_up(ws, cfg, {0: 6, 1: 6}, ["tumor", "stroma"])["per_class"] == out["per_class"] and \
        all(m[0] == "stroma" for m in made)


def test_run_refuses_one_class_and_names_a_class_lost_to_bad_files(tmp_path, capsys):
    one = _user_image_folder(tmp_path / "one", ["tumor"], 6, 32, seed=0)
    assert run_cmd.cli(["--workspace", str(tmp_path / "w1"), "--preset", "tiny", "--labeled", str(one)]) == 2
    assert "1 usable class(es) (tumor); a classifier needs at least 2" in capsys.readouterr().err
    train = _user_image_folder(tmp_path / "train", ["a", "b", "c"], 6, 32, seed=0)
    for f in (train / "c").iterdir():
        f.write_bytes(b"\xff\xd8 broken")
    test = _user_image_folder(tmp_path / "test", ["a", "b", "c"], 3, 32, seed=1)
    args = ["--workspace", str(tmp_path / "w2"), "--preset", "tiny", "--labeled", str(train), "--test", str(test)]
    assert run_cmd.cli(args) == 2
    err = capsys.readouterr().err
    assert "classes missing from" in err and "c: every file was unreadable (e.g. " in err and "c_0.jpg" in err
    # the same class lost with no test folder given: run goes on with the rest but says what it skipped
    from core.data.labeled import prepare_labeled
    from core.config.presets import preset
    ws = Workspace(tmp_path / "w3")
    prepare_labeled(ws, preset("tiny"), train)
    from core.protocol.stages import mark_done
    mark_done(ws, preset("tiny"), "data", {"labeled": prepare_labeled(ws, preset("tiny"), train)}, 0.0)
    lines = experiment.data_report(ws)
    assert "empty class folder (no usable image): c" in lines
    assert sum(line.startswith("skipped ") and "/c/" in line for line in lines) == 6
