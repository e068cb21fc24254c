"""The bundled demo models (assets/demo_models) load, run, and are better than chance."""
from pathlib import Path

import numpy as np
import pytest
import torch

from core.config.store import load_config
from core.evaluate.summary import main_cell
from core.workspace import Workspace

BUNDLE = Path(__file__).resolve().parents[3] / "assets" / "demo_models"


@pytest.fixture(scope="module")
def demo_ws(tmp_path_factory):
    from core.protocol.demo_models import install_demo
    assert (BUNDLE / "bundle.json").exists(), "assets/demo_models is missing: run `make demo-models`"
    ws = Workspace(tmp_path_factory.mktemp("bundle") / "ws")
    install_demo(BUNDLE, ws)
    return ws


def test_bundle_is_small_and_verified():
    from core.protocol.demo_models import verify_bundle
    info = verify_bundle(BUNDLE)
    # at most 60 MB: three label budgets fit only with repeated bytes stored once and the UNet
    # stored in fp16 (57.8 MB for the v5 bundle)
    assert info["bytes"] <= 60e6, f"bundle is {info['bytes'] / 1e6:.1f} MB"


def test_diffusion_models_load_with_plain_diffusers_and_give_finite_outputs(demo_ws):
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DModel
    cfg = load_config(demo_ws.root / "config.json")
    vae = AutoencoderKL.from_pretrained(demo_ws.autoencoder_dir)
    unet = UNet2DModel.from_pretrained(demo_ws.unet_dir)
    sched = DDPMScheduler.from_pretrained(demo_ws.scheduler_dir)
    assert sched.config.beta_start == cfg.pretrain.beta_start
    x = torch.rand(2, 3, cfg.data.image_size, cfg.data.image_size) * 2 - 1
    with torch.no_grad():
        z = vae.encode(x).latent_dist.mode() * vae.config.scaling_factor
        assert z.shape == (2, cfg.autoencoder.latent_channels, cfg.latent_size, cfg.latent_size)
        eps = unet(z, torch.tensor([10, 900])).sample
        y = vae.decode(z / vae.config.scaling_factor).sample
    assert eps.shape == z.shape and y.shape == x.shape
    assert torch.isfinite(eps).all() and torch.isfinite(y).all()


def test_latent_classifier_is_noise_aware_and_finite(demo_ws):
    import pandas as pd
    from core.models import load_latent_classifier
    clf = load_latent_classifier(demo_ws)
    z = torch.randn(3, clf.config.in_channels, clf.config.sample_size, clf.config.sample_size)
    with torch.no_grad():
        logits = clf(z, torch.tensor([0, 500, 999]))
    assert logits.shape == (3, len(clf.config.class_names)) and torch.isfinite(logits).all()
    acc = pd.read_csv(demo_ws.latent_classifier_dir / "accuracy_by_t.csv")
    chance = 1 / len(clf.config.class_names)
    assert acc["accuracy"].iloc[0] > chance + 0.2     # low-noise bucket on the validation split


def test_filter_classifier_beats_chance_on_demo_test_split(demo_ws):
    from core.train.image_classifier import metrics_on_test
    from core.models import load_filter_classifier
    from core.data.tables import load_splits
    cfg = load_config(demo_ws.root / "config.json")
    model, info, centroids = load_filter_classifier(demo_ws)
    frame, classes = load_splits(demo_ws)
    assert list(info["classes"]) == classes and centroids.shape[0] == len(classes)
    metrics = metrics_on_test(model, frame[frame.split == "test"], classes, cfg.downstream)
    assert metrics["balanced_accuracy"] > 1 / len(classes) + 0.3
    assert np.isfinite(metrics["accuracy"])


def _acceptance(ws: Workspace) -> dict[str, float]:
    """Per class, the share of the budget's scored samples at or over the threshold the bundle
    ships: each class's own when calibrated on validation (thresholds.csv, which the Selection
    tab shows and names), else the global one."""
    import pandas as pd
    from core.data.tables import load_splits
    from core.evaluate.selection import load_thresholds
    cfg = load_config(ws.root / "config.json")
    _, classes = load_splits(ws)
    scores = pd.read_csv(ws.synthetic_scores)
    bars = dict.fromkeys(classes, cfg.selection.threshold)
    if cfg.selection.calibration != "none":
        table = load_thresholds(ws)
        assert set(table["class"]) == set(classes), "calibrated bundle without synthetic/thresholds.csv"
        bars = dict(zip(table["class"], table["threshold"]))
    return {c: float((scores.loc[scores["class"] == c, "confidence"] >= bars[c]).mean()) for c in classes}


def test_a_class_the_judge_keeps_nothing_of_is_reported_short_and_never_drawn(demo_ws):
    """The bundled generator makes no stratum corneum, epidermis or dermis the judge accepts (its
    samples lack the thin keratin lines and the nuclei, and come out darker than the real classes'
    colour range). Such a
    class is said per budget (summary.json synthetic.checks: kept 0), per grid cell (shortfall) and
    per run (runs.csv added_per_class: 0 drawn of what was wanted), and no run adds an image of it."""
    import json
    import pandas as pd
    from core.data.budget import budget_name
    summary = json.loads((demo_ws.results_dir / "summary.json").read_text())
    empty = {(b, c) for b, per in summary["synthetic"]["checks"].items() for c, n in per.items() if n["kept"] == 0}
    assert ("f1", "stratum_corneum") in empty, empty      # when it is made, this test and the xfail below go
    assert any(n["kept"] > 0 for per in summary["synthetic"]["checks"].values() for n in per.values())
    for cell in summary["grid"]:
        short = cell["arms"]["selected"]["shortfall"] or ""
        assert all(f"{c}: 0 of" in short for b, c in empty if b == cell["budget"]), (cell["budget"], short)
    runs = pd.read_csv(demo_ws.runs_csv)
    selected = runs[runs.arm.isin(["selected", "selected+pseudo"])]
    assert len(selected)
    for _, run in selected.iterrows():
        budget = budget_name(run["label_fraction"])
        drawn = json.loads(run["added_per_class"])["synthetic"]
        added = pd.read_csv(demo_ws.run_synthetic(run["run_key"]))
        for b, c in empty:
            if b == budget:
                assert drawn[c]["drawn"] == 0 and drawn[c]["wanted"] > 0
                assert c not in set(added["class_name"]), (run["run_key"], c)


@pytest.mark.xfail(strict=True, reason="the stronger target, not met: at all labels the bundle's "
                   "filter scores 1 of 400 stratum corneum, 5 of 400 dermis and 54 of 400 background "
                   "samples above their bars (strict: passing means the target is met and this mark must go)")
def test_every_class_keeps_a_fifth_of_its_samples_at_the_bundled_threshold(demo_ws):
    rate = _acceptance(demo_ws)
    assert min(rate.values()) >= 0.2, rate


def test_bundle_carries_results_and_scored_synthetic_images(demo_ws):
    import json
    import pandas as pd
    from core.evaluate.summary import cell_arms, main_cell
    summary = json.loads((demo_ws.results_dir / "summary.json").read_text())
    cell = main_cell(summary)
    assert cell["baseline"]["accuracy"]["runs"] and cell["arms"]["selected"]["metrics"]["accuracy"]["runs"]
    scores = pd.read_csv(demo_ws.synthetic_dir / "scores.csv")
    assert {"confidence", "class", "seed"} <= set(scores.columns) and len(scores) > 0
    assert (demo_ws.root / Path(scores["file"].iloc[0])).exists() or Path(scores["file"].iloc[0]).exists() \
        or (demo_ws.synthetic_dir / scores["file"].iloc[0]).exists()


def test_installed_bundle_is_done_under_the_current_demo_preset(demo_ws):
    """`python -m core run --preset demo` on the installed demo retrains, resamples and reruns
    nothing: speed switches (sampling.compile, batch_size) and the rows the bundle leaves out of
    the synthetic tables must not make a bundled stage or grid run stale."""
    import pandas as pd

    from core.config.presets import preset
    from core.protocol.experiment import _steps, data_sources, plan_runs, run_keys
    from core.protocol.stages import is_done
    cfg = preset("demo")
    stale = [f"{stage}[{view.scope}]" for stage, view in _steps(demo_ws, cfg)
             if not is_done(view, cfg, stage, data_sources() if stage == "data" else None)]
    assert not stale, f"bundled stages no longer match the demo preset: {stale}"
    finished = set(pd.read_csv(demo_ws.results_dir / "runs.csv")["run_key"])
    assert set(run_keys(demo_ws, cfg, plan_runs(cfg))) <= finished


def test_bundled_runs_each_used_one_label_budget(demo_ws):
    from labdata import assert_one_label_budget
    assert_one_label_budget(demo_ws)


def test_bundled_models_folder_loads_as_a_diffusers_pipeline_and_describes_itself():
    """assets/demo_models/models is a pipeline folder: model_index.json, one folder per
    component, a model card; diffusers loads it as it stands (LatentClassifier included)."""
    from PIL import Image

    from core import GuidedLatentPipeline
    folder = BUNDLE / "models"
    images = GuidedLatentPipeline.from_pretrained(folder)(
        class_ids=[0], generator=[torch.Generator().manual_seed(0)], guidance_scale=3.0, num_inference_steps=2).images
    assert len(images) == 1 and isinstance(images[0], Image.Image)
    assert images[0].size == (load_config(BUNDLE / "config.json").data.image_size,) * 2
    card = (folder / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: diffusers\nlicense: other\n")
    assert "- diffusers:GuidedLatentPipeline" in card.split("---")[1]
    assert "| cmu_he_skin |" in card and '"pretrain": {' in card and "| selected |" in card


def test_each_budget_samples_with_its_own_classifier(demo_ws):
    """A non-primary budget loads the root pipeline with its classifier as a component override."""
    from core.data.budget import budget_views
    from core.io import folder_hash
    from core.models import load_latent_classifier
    from core.generate.loading import load_pipeline
    cfg = load_config(demo_ws.root / "config.json")
    firsts = []
    for _, view in budget_views(demo_ws, cfg):
        pipe = load_pipeline(view, cfg, "cpu")
        loaded, own = pipe.latent_classifier.state_dict(), load_latent_classifier(view).state_dict()
        assert loaded.keys() == own.keys() and all(torch.equal(loaded[k], own[k]) for k in own)
        assert pipe.model_hashes["classifier_hash"] == folder_hash(view.latent_classifier_dir)
        assert pipe.model_hashes["unet_hash"] == folder_hash(demo_ws.unet_dir)
        firsts.append(next(iter(own.values())))
    assert len(firsts) == 3 and not torch.equal(firsts[0], firsts[1]) and not torch.equal(firsts[1], firsts[2])


def test_a_bundle_with_the_old_folder_names_installs_under_the_new_ones(tmp_path):
    """A bundle exported with older folder names (models/autoencoder, models/classifier,
    metrics/classifier.jsonl) installs into the current layout, and its stages are still done."""
    import json
    import shutil

    from core.config.presets import preset
    from core.protocol.demo_models import install_demo
    from core.protocol.experiment import _steps
    from core.protocol.stages import is_done
    old = tmp_path / "old_bundle"
    shutil.copytree(BUNDLE, old)
    renames = {"models/vae/": "models/autoencoder/", "models/latent_classifier/": "models/classifier/"}
    for models in [old / "models", *(old / "budgets").glob("*/models")]:
        for now, before in renames.items():
            if (models / now.split("/")[1]).is_dir():
                (models / now.split("/")[1]).rename(models / before.split("/")[1])
    info = json.loads((old / "bundle.json").read_text())
    for now, before in renames.items():
        info["files"] = {rel.replace(now, before): sha for rel, sha in info["files"].items()}
    (old / "bundle.json").write_text(json.dumps(info))
    assert (old / "budgets" / "f0.1" / "models" / "classifier").is_dir()
    ws = Workspace(tmp_path / "ws")
    install_demo(old, ws, build_data=False)
    assert not (ws.models_dir / "autoencoder").exists() and (ws.autoencoder_dir / "config.json").exists()
    assert (ws.for_budget("f0.1", primary=False).latent_classifier_dir / "config.json").exists()
    cfg = preset("demo")
    stale = [f"{stage}[{view.scope}]" for stage, view in _steps(ws, cfg)
             if stage not in ("data",) and not is_done(view, cfg, stage)]
    assert not stale
