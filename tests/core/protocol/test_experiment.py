"""The experiment's rules with the generative stages replaced by writers of their outputs
(protocol_fakes): a stage reruns only when what it reads changed, a stopped grid resumes, the
top-up samples short classes again, bad labeled data is refused or reported. Every real stage
runs in test_real_pipeline.py."""
import json
import os
import threading
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

import core.protocol.experiment as experiment
from core.protocol.stages import PIPELINE
from core.commands import run as run_cmd
from core.config.checks import apply_overrides
from core.config.presets import preset
from core.config.store import config_hash as cfg_hash
from core.data.tables import load_splits
from core.evaluate.summary import main_cell
from core.workspace import Workspace
from labdata import copy_workspace, image_folder, make_splits, make_synthetic
from protocol_fakes import fake_generative_stages, fast


@pytest.fixture(scope="module")
def grid_done(tmp_path_factory):
    """One finished run_all (generative stages faked, the filter classifier, scoring, selection and
    the 9-run grid real): its workspace, config, summary, runs.csv and the stages it ran. A test
    that runs again takes a copy (copy_workspace)."""
    with pytest.MonkeyPatch.context() as mp:
        calls = []
        fake_generative_stages(mp, calls)
        ws = Workspace(tmp_path_factory.mktemp("grid") / "ws")
        cfg = fast(preset("tiny"))
        summary = experiment.run_all(ws, cfg)
    return SimpleNamespace(ws=ws, cfg=cfg, summary=summary, runs=pd.read_csv(ws.results_dir / "runs.csv"),
                           calls=calls)


def test_a_first_run_writes_every_arm_ratio_and_seed(grid_done):
    ws, summary, runs = grid_done.ws, grid_done.summary, grid_done.runs
    assert grid_done.calls == list(PIPELINE)
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
    assert (runs.steps == 6).all()                      # equal compute: every arm, every ratio
    assert (ws.stages_dir / "pretrain.json").exists()


def test_the_saved_summary_says_what_ran_and_the_quality_it_drew_from(grid_done):
    ws, summary = grid_done.ws, grid_done.summary
    saved = json.loads((ws.results_dir / "summary.json").read_text())
    main = main_cell(summary)
    assert main_cell(saved)["arms"]["selected"]["metrics"]["macro_f1"]["mean"] == \
        pytest.approx(main["arms"]["selected"]["metrics"]["macro_f1"]["mean"])
    assert saved["config"]["downstream"]["steps"] == 6
    assert saved["status"] == "complete" and saved["label_subsets"].startswith("one labeled subset")
    quality = saved["quality"]["f1"]          # the accepted images the runs drew from, with floors
    assert quality["features"] and set(quality["per_class"]) == {"tumor", "stroma"}
    assert all("fd" in m["floor"] for m in quality["per_class"].values())
    assert "Quality of the accepted images" in (ws.results_dir / "summary.md").read_text()


def test_the_same_config_reruns_nothing_and_retrains_no_run(grid_done, tmp_path, monkeypatch):
    cfg, runs = grid_done.cfg, grid_done.runs
    ws = copy_workspace(grid_done.ws, tmp_path / "ws")
    calls = []
    fake_generative_stages(monkeypatch, calls)
    mtime = os.path.getmtime(ws.filter_classifier_dir / "model.safetensors")
    experiment.run_all(ws, cfg)
    assert calls == []
    assert os.path.getmtime(ws.filter_classifier_dir / "model.safetensors") == mtime
    assert pd.read_csv(ws.results_dir / "runs.csv")["seconds"].tolist() == runs["seconds"].tolist()


def test_images_the_app_adds_at_another_scale_leave_every_stage_done(grid_done, tmp_path, monkeypatch):
    """Manifest and scores rows at another guidance scale are not this config's: nothing goes
    stale, no run is retrained."""
    cfg, runs = grid_done.cfg, grid_done.runs
    ws = copy_workspace(grid_done.ws, tmp_path / "ws")
    calls = []
    fake_generative_stages(monkeypatch, calls)
    for table in ("manifest.csv", "scores.csv"):
        frame = pd.read_csv(ws.synthetic_dir / table)
        extra_row = frame.iloc[:1].assign(file="tumor/tumor-seed5-s7.png", guidance_scale=7.0)
        pd.concat([frame, extra_row]).to_csv(ws.synthetic_dir / table, index=False)
    experiment.run_all(ws, cfg)
    assert calls == []
    assert pd.read_csv(ws.results_dir / "runs.csv")["seconds"].tolist() == runs["seconds"].tolist()


def test_a_sampling_change_reruns_sampling_and_what_reads_it(grid_done, tmp_path, monkeypatch):
    cfg = grid_done.cfg
    ws = copy_workspace(grid_done.ws, tmp_path / "ws")
    calls = []
    fake_generative_stages(monkeypatch, calls)
    other = experiment.run_all(ws, apply_overrides(cfg, ["sampling.guidance_scale=3.0"]))
    assert calls == ["sampling", "scoring", "selection"]       # not the models before it
    # ...but the manifest holds no image made at guidance 3: none is used, and the runs are redone
    assert other["synthetic"]["generated"] == 0
    assert (pd.read_csv(ws.results_dir / "runs.csv")["n_synthetic"] == 0).all()


def test_back_to_a_config_restores_its_runs_and_a_damaged_marker_reruns_its_stage(grid_done, tmp_path,
                                                                                 monkeypatch):
    """After a run at guidance 3, back at guidance 10 with the autoencoder's marker damaged."""
    cfg, runs = grid_done.cfg, grid_done.runs
    ws = copy_workspace(grid_done.ws, tmp_path / "ws")
    calls = []
    fake_generative_stages(monkeypatch, calls)
    experiment.run_all(ws, apply_overrides(cfg, ["sampling.guidance_scale=3.0"]))
    calls.clear()
    (ws.stages_dir / "autoencoder.json").write_text("{ not json")
    experiment.run_all(ws, cfg)
    # the damaged marker reruns its stage (its rewritten outputs hash the same, so nothing after
    # it reruns for that); sampling and what reads it rerun because the config went back to 10
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
        drawn["path"], budget["path"] = ws.resolved_paths(drawn["path"]), ws.resolved_paths(budget["path"])
        splits, _ = load_splits(ws)                 # workspace paths are stored relative to it
        assert not drawn["path"].isin(budget["path"]).any()          # label-hidden images only
        assert drawn["path"].isin(splits[splits.split != "test"]["path"]).all()
    arms = main_cell(summary)["arms"]
    assert set(arms) == {"selected", "unselected", "pseudo", "selected+pseudo"}
    assert all(a["real_batches_match_baseline"] and a["delta"]["accuracy"]["n"] == 2 for a in arms.values())
    text = (ws.results_dir / "summary.md").read_text()
    assert all(f"| {arm} |" in text for arm in arms)


@pytest.fixture(scope="module")
def grid_stopped(tmp_path_factory):
    """run_all stopped inside the 2nd of its 4 grid runs (2 seeds x (baseline + ratio 1.0))."""
    cfg = apply_overrides(fast(preset("tiny")), ["experiment.synthetic_ratios=1.0", "experiment.seeds=0,1"])
    ws = Workspace(tmp_path_factory.mktemp("stopped") / "ws")
    stop = threading.Event()

    def progress(p):
        if p.get("stage") == "experiment" and p.get("run", 0) >= 2:
            stop.set()                      # stop inside the 2nd grid run
    with pytest.MonkeyPatch.context() as mp:
        fake_generative_stages(mp, [])
        out = experiment.run_all(ws, cfg, progress=progress, stop=stop)
    return SimpleNamespace(ws=ws, cfg=cfg, out=out)


def test_a_stopped_grid_keeps_its_finished_run_and_says_partial(grid_stopped):
    ws, cfg, out = grid_stopped.ws, grid_stopped.cfg, grid_stopped.out
    assert out["stopped"] is True and out["runs_done"] == 1
    assert len(pd.read_csv(ws.results_dir / "runs.csv")) == 1
    # the summary on disk describes this config's finished run, marked partial
    partial = json.loads((ws.results_dir / "summary.json").read_text())
    assert partial["status"] == "partial: 1 of 4 runs" and partial["config_hash"] == cfg_hash(cfg)
    assert "partial: 1 of 4 runs" in (ws.results_dir / "summary.md").read_text()


def test_killed_grid_resumes_where_it_stopped(grid_stopped, tmp_path, monkeypatch):
    ws = copy_workspace(grid_stopped.ws, tmp_path / "ws")
    calls = []
    fake_generative_stages(monkeypatch, calls)
    summary = experiment.run_all(ws, grid_stopped.cfg)
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


def _fake_generate(made):
    """generate_images as the top-up calls it: tumor comes out in its own colour, stroma never
    does (drawn as tumor); each call is recorded in `made` as (class, first seed, count)."""
    from core.io import folder_hash, save_png
    from labdata import tile

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
    return fake_generate


@pytest.fixture(scope="module")
def topped_up(tmp_path_factory):
    """Two classes wanting 6 accepted images each, 2 good + 2 wrong-colour images each to start,
    a real filter classifier and scores, then top_up with the generator of _fake_generate:
    its workspace, config, result and the generator calls it made."""
    import core.generate.sampling as sampling
    from core.train.filter_classifier import train_filter_classifier
    from core.evaluate.selection import score_synthetic
    from core.protocol.topup import top_up
    ws = Workspace(tmp_path_factory.mktemp("topup") / "ws").ensure()
    make_splits(ws)
    cfg = apply_overrides(fast(preset("tiny")), ["filter_classifier.steps=18", "downstream.steps=18",
                                                 "selection.threshold=0.5", "sampling.num_per_class=4",
                                                 "experiment.topup_rounds=2"])
    for folder in (ws.unet_dir, ws.autoencoder_dir, ws.latent_classifier_dir):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text("{}")
    make_synthetic(ws, per_class=4)              # 2 good + 2 wrong-colour images per class
    train_filter_classifier(ws, cfg)
    score_synthetic(ws, cfg)
    made = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sampling, "generate_images", _fake_generate(made))
        out = top_up(ws, cfg, {0: 6, 1: 6}, ["tumor", "stroma"])
    return SimpleNamespace(ws=ws, cfg=cfg, out=out, made=made)


def test_short_classes_are_topped_up_and_what_cannot_be_is_reported(topped_up):
    """A class whose generator gives good images is topped up to its want; one whose generator
    never gives an acceptable image is sampled for every round and then reported short."""
    out, made = topped_up.out, topped_up.made
    tumor, stroma = out["per_class"]["tumor"], out["per_class"]["stroma"]
    assert tumor["accepted"] >= 6 and tumor["rounds"] == 1            # one round was enough
    assert stroma["accepted"] < 6 and stroma["rounds"] == 2 and stroma["generated"] == 4 + 4 + 4
    assert [m for m in made if m[0] == "stroma"] == [("stroma", 1 * 1_000_000 + 4, 4), ("stroma", 1_000_000 + 8, 4)]


def test_after_a_top_up_the_draw_delivers_the_ratio_and_names_the_short_class(topped_up):
    from core.evaluate.summary import _shortfall
    from core.protocol.topup import accepted_images
    ws, cfg = topped_up.ws, topped_up.cfg
    real = load_splits(ws)[0].query("split == 'train'")
    _, report = experiment.draw_synthetic(accepted_images(ws, cfg), real, 0.5, seed=0)
    assert report[0]["drawn"] == 6 and report[1]["drawn"] < 6
    # the summary's added counts are per part (synthetic, unselected, pseudo), then per class
    text = _shortfall({"synthetic": {"tumor": report[0], "stroma": report[1]}}, 0.5, 2)
    assert text.startswith("ratio 0.5 not met for 1 class(es)") and "stroma:" in text and "tumor" not in text


def test_a_rerun_of_the_top_up_finds_its_images_done(topped_up, tmp_path, monkeypatch):
    """Only the class still short is sampled again, with the same seeds: nothing is added."""
    import core.generate.sampling as sampling
    from core.protocol.topup import top_up
    ws = copy_workspace(topped_up.ws, tmp_path / "ws")
    made = []
    monkeypatch.setattr(sampling, "generate_images", _fake_generate(made))
    assert top_up(ws, topped_up.cfg, {0: 6, 1: 6}, ["tumor", "stroma"])["per_class"] == topped_up.out["per_class"] and \
        all(m[0] == "stroma" for m in made)


def test_run_refuses_one_class(tmp_path, capsys):
    one = image_folder(tmp_path / "one", ["tumor"], 6, 32, seed=0)
    assert run_cmd.cli(["--workspace", str(tmp_path / "w1"), "--preset", "tiny", "--labeled", str(one)]) == 2
    assert "1 usable class(es) (tumor); a classifier needs at least 2" in capsys.readouterr().err


def _lost_class_folder(root):
    """Classes a, b, c of 6 images each; every file of c unreadable."""
    train = image_folder(root, ["a", "b", "c"], 6, 32, seed=0)
    for f in (train / "c").iterdir():
        f.write_bytes(b"\xff\xd8 broken")
    return train


def test_run_names_a_class_lost_to_bad_files_when_a_test_folder_needs_it(tmp_path, capsys):
    train = _lost_class_folder(tmp_path / "train")
    test = image_folder(tmp_path / "test", ["a", "b", "c"], 3, 32, seed=1)
    args = ["--workspace", str(tmp_path / "w2"), "--preset", "tiny", "--labeled", str(train), "--test", str(test)]
    assert run_cmd.cli(args) == 2
    err = capsys.readouterr().err
    assert "classes missing from" in err and "c: every file was unreadable (e.g. " in err and "c_0.jpg" in err


def test_data_report_names_a_class_lost_to_bad_files_and_each_file_skipped(tmp_path):
    """The same class lost with no test folder given: the run goes on with the rest but says what
    it skipped."""
    from core.data.labeled import prepare_labeled
    from core.protocol.stages import mark_done
    train = _lost_class_folder(tmp_path / "train")
    ws = Workspace(tmp_path / "w3")
    prepare_labeled(ws, preset("tiny"), train)
    mark_done(ws, preset("tiny"), "data", {"labeled": prepare_labeled(ws, preset("tiny"), train)}, 0.0)
    lines = experiment.data_report(ws)
    assert "empty class folder (no usable image): c" in lines
    assert sum(line.startswith("skipped ") and "/c/" in line for line in lines) == 6
