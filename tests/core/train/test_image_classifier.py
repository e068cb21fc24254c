import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from core.train.filter_classifier import class_centroids, train_filter_classifier
from core.train.image_classifier import metrics_on_test, train_image_classifier
from core.evaluate.inference import load_images, predict
from core.models import build_backbone, load_filter_classifier
from core.errors import UserError
from core.config.checks import apply_overrides
from core.workspace import Workspace
from labdata import make_splits


@pytest.fixture
def ws(tmp_path):
    return Workspace(tmp_path / "ws").ensure()


@pytest.fixture
def cfg(tiny_cfg):
    return apply_overrides(tiny_cfg, ["downstream.steps=9", "downstream.evals=3", "downstream.batch_size=8",
                                      "downstream.lr=0.003"])


def test_train_learns_selects_on_val_and_skips_corrupt_files(ws, cfg):
    splits = make_splits(ws)
    classes = ["tumor", "stroma"]
    bad = ws.root / "broken.png"
    bad.write_bytes(b"not a png")
    train = pd.concat([splits[splits.split == "train"],
                       pd.DataFrame([{"path": str(bad), "label": 0}])], ignore_index=True)
    val, test = splits[splits.split == "val"], splits[splits.split == "test"]
    picked = apply_overrides(cfg, ["downstream.model_selection=validation"]).downstream
    model, history = train_image_classifier(train, val, classes, picked, seed=0)
    assert list(history.columns[:4]) == ["step", "epoch", "train_loss", "lr"]
    assert history["step"].tolist() == [3, 6, 9] and history.attrs["steps"] == 9
    best = history.loc[history["val_balanced_accuracy"].idxmax()]
    assert history.attrs["best_step"] == best["step"]
    assert history.attrs["best_val_balanced_accuracy"] == best["val_balanced_accuracy"]
    assert str(bad) in history.attrs["skipped"]
    metrics = metrics_on_test(model, test, classes, picked)
    assert metrics["accuracy"] >= 0.75, metrics          # colour-separable classes
    assert np.array(metrics["confusion_matrix"]).sum() == len(test)
    assert set(metrics["per_class_recall"]) == set(classes)


def test_same_seed_same_model(ws, cfg):
    splits = make_splits(ws, per_split={"train": 4, "val": 2})
    one = apply_overrides(cfg, ["downstream.steps=2", "downstream.evals=1"]).downstream
    train, val = splits[splits.split == "train"], splits[splits.split == "val"]
    a, _ = train_image_classifier(train, val, ["tumor", "stroma"], one, seed=3)
    b, _ = train_image_classifier(train, val, ["tumor", "stroma"], one, seed=3)
    images, _, _ = load_images(val["path"], one.image_size)
    assert torch.allclose(predict(a, images)[0], predict(b, images)[0])


def test_predict_returns_probs_and_pooled_features():
    model = build_backbone("test_resnet", 3).eval()
    probs, feats = predict(model, torch.randint(0, 255, (5, 3, 32, 32), dtype=torch.uint8))
    assert probs.shape == (5, 3) and torch.allclose(probs.sum(1), torch.ones(5), atol=1e-3)
    assert feats.shape == (5, model.num_features)


def test_backbone_errors_name_the_field(tmp_path):
    with pytest.raises(UserError, match="downstream.backbone"):
        build_backbone("no_such_net", 2)
    with pytest.raises(UserError, match="downstream.pretrained_path"):
        build_backbone("test_resnet", 2, tmp_path / "missing.safetensors")
    # local weights load (classifier head with another class count is skipped by shape)
    src = build_backbone("test_resnet", 5)
    weights = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(weights))
    dst = build_backbone("test_resnet", 2, weights)
    first = next(iter(src.state_dict()))
    assert torch.equal(dst.state_dict()[first], src.state_dict()[first])
    assert dst.get_classifier().out_features == 2


def test_centroids_are_unit_class_means():
    feats = torch.tensor([[2.0, 0.0], [0.0, 3.0], [0.0, 1.0]])
    cent = class_centroids(feats, [0, 1, 1], 2)
    assert torch.allclose(cent, torch.tensor([[1.0, 0.0], [0.0, 1.0]]))


def test_filter_classifier_roundtrip_never_reads_test(ws, cfg, monkeypatch):
    import core.train.image_classifier as classify
    splits = make_splits(ws)
    test_paths = set(splits[splits.split == "test"].path)
    read = []
    real_load = classify.load_images

    def recording(paths, size):       # every image the filter classifier decodes, test ones included
        read.extend(str(p) for p in paths)
        return real_load(paths, size)
    monkeypatch.setattr(classify, "load_images", recording)
    out = train_filter_classifier(ws, cfg)
    assert read and not test_paths & set(read), "the filter classifier read a test image"
    assert out["stopped"] is False and out["classes"] == ["tumor", "stroma"]
    # labels.csv is exactly what it trained and selected on: the budget's train + val images
    labels = pd.read_csv(ws.filter_classifier_dir / "labels.csv")
    pool = splits[splits.split != "test"]
    assert set(labels.path) == set(pool.path) == set(read)
    assert (labels.set_index("path").loc[pool.path, "split"].to_numpy() == pool.split.to_numpy()).all()
    model, info, cent = load_filter_classifier(ws)
    assert info["backbone"] == "test_resnet" and info["image_size"] == 32
    assert cent.shape == (2, model.num_features)
    assert torch.allclose(cent.norm(dim=1), torch.ones(2), atol=1e-5)
    history = pd.read_csv(ws.filter_classifier_dir / "history.csv")
    assert info["val_balanced_accuracy"] == pytest.approx(history["val_balanced_accuracy"].max())
    assert info["best_step"] == history.loc[history["val_balanced_accuracy"].idxmax(), "step"]
    assert (ws.filter_classifier_dir / "lab_config.json").exists()


def test_filter_classifier_trains_on_the_budget_subset(ws, cfg):
    splits = make_splits(ws, per_split={"train": 20, "val": 10, "test": 4})
    half = apply_overrides(cfg, ["experiment.label_fractions=0.5"])
    train_filter_classifier(ws, half)
    labels = pd.read_csv(ws.filter_classifier_dir / "labels.csv")
    assert labels.groupby(["class_name", "split"]).size().to_dict() == {
        (c, s): n for c in ("tumor", "stroma") for s, n in (("train", 10), ("val", 5))}
    assert set(labels.path) <= set(splits[splits.split != "test"].path)
    assert pd.read_csv(ws.labels_file).equals(labels)


def test_stop_event_returns_early(ws, cfg):
    import threading
    make_splits(ws)
    stop = threading.Event()
    stop.set()
    assert train_filter_classifier(ws, cfg, stop=stop)["stopped"] is True
    assert not ws.filter_classifier_dir.exists()


def test_every_batch_is_full_and_capped_at_the_set_size(ws, cfg):
    splits = make_splits(ws, per_split={"train": 9, "val": 2})       # 18 train images
    train, val = splits[splits.split == "train"], splits[splits.split == "val"]
    # epochs: every image once per epoch; the batch shrinks so that an epoch is at least 4 steps
    # (18 images at batch 17 once made one step per epoch)
    epochs = apply_overrides(cfg, ["downstream.compute=epochs", "downstream.epochs=2", "downstream.batch_size=17"]).downstream
    _, history = train_image_classifier(train, val, ["tumor", "stroma"], epochs, seed=0)
    assert history.attrs["batch_size"] == 5 and history.attrs["steps"] == 8 and history.attrs["n_train"] == 18
    assert history.attrs["real_views_min"] >= 2 and history.attrs["real_views_per_image"] == pytest.approx(40 / 18)
    big = apply_overrides(cfg, ["downstream.batch_size=64"]).downstream            # a few-label set
    _, history = train_image_classifier(train, val, ["tumor", "stroma"], big, seed=0)
    assert history.attrs["batch_size"] == 18 and history.attrs["steps"] == big.steps
    assert history.attrs["real_views_min"] == history.attrs["real_views_max"] == big.steps


def test_step_budget_gives_every_arm_the_same_optimizer_steps(ws, cfg):
    splits = make_splits(ws, per_split={"train": 6, "val": 2})
    train, val = splits[splits.split == "train"], splits[splits.split == "val"]
    extra = pd.concat([train] * 3, ignore_index=True)                            # 4x the images
    _, base = train_image_classifier(train, val, ["tumor", "stroma"], cfg.downstream, seed=0)
    _, aug = train_image_classifier(train, val, ["tumor", "stroma"], cfg.downstream, seed=0, extra_df=extra)
    assert base.attrs["steps"] == aug.attrs["steps"] == cfg.downstream.steps
    assert aug.attrs["n_train"] == 4 * base.attrs["n_train"]
    # equal real exposure: the same real batch, the added images at their ratio on top
    assert (base.attrs["real_batch"], aug.attrs["real_batch"], aug.attrs["added_batch"]) == (8, 8, 24)
    assert base.attrs["real_views_per_image"] == aug.attrs["real_views_per_image"] == 9 * 8 / 12
    assert aug.attrs["added_share"] == pytest.approx(0.75) and base.attrs["added_share"] == 0
    epochs = apply_overrides(cfg, ["downstream.compute=epochs", "downstream.epochs=1"]).downstream
    _, base = train_image_classifier(train, val, ["tumor", "stroma"], epochs, seed=0)
    _, aug = train_image_classifier(train, val, ["tumor", "stroma"], epochs, seed=0, extra_df=extra)
    # the reference's option says so: real and added images in one pool, so more images take more steps
    assert (base.attrs["steps"], aug.attrs["steps"]) == (4, 6)
    assert (base.attrs["batch_size"], aug.attrs["batch_size"]) == (3, 8)


def test_an_arm_trains_on_exactly_its_baselines_real_batches(ws, cfg, monkeypatch):
    """Same seed: the real images, their order, batch size and augmentation are the baseline's
    whatever the arm adds (the fingerprint covers indices and augmentation draws)."""
    import core.train.image_classifier as ic
    splits = make_splits(ws, per_split={"train": 10, "val": 2})
    train, val = splits[splits.split == "train"], splits[splits.split == "val"]
    extra = train.assign(label=1 - train["label"]).iloc[:7]                 # any added set
    he = apply_overrides(cfg, ["downstream.augment=he", "downstream.stain_jitter=0.2"]).downstream
    seen = {}
    real_augment = ic.augmenter

    def spying(cfg_, device):           # the model inputs of the real part, step by step
        inner = real_augment(cfg_, device)

        def augment(batch, gen):
            out = inner(batch, gen)
            seen.setdefault(run, []).append(out[0].clone())
            return out
        return augment
    monkeypatch.setattr(ic, "augmenter", spying)
    run = "base"
    _, base = train_image_classifier(train, val, ["tumor", "stroma"], he, seed=4)
    run = "arm"
    _, arm = train_image_classifier(train, val, ["tumor", "stroma"], he, seed=4, extra_df=extra)
    run = "other"
    _, other = train_image_classifier(train, val, ["tumor", "stroma"], he, seed=5)
    assert base.attrs["real_sequence"] == arm.attrs["real_sequence"] != other.attrs["real_sequence"]
    real_parts = seen["arm"][0::2]                   # the arm augments its real part, then its added part
    assert len(real_parts) == len(seen["base"]) == he.steps
    assert all(torch.equal(a, b) for a, b in zip(seen["base"], real_parts))


def test_batchnorm_statistics_come_from_real_images_only(ws, cfg, monkeypatch):
    """norm=split: every forward that moves a BatchNorm's running statistics sees the real part of
    the batch alone (the added part is normalised by its own statistics, momentum 0); with
    recompute, the kept weights' running statistics are exactly those of the real training images."""
    from core.train.normalization import batch_norms, recompute_running_stats
    splits = make_splits(ws, per_split={"train": 10, "val": 4})
    train, val = splits[splits.split == "train"], splits[splits.split == "val"]
    extra = pd.concat([train] * 2, ignore_index=True).iloc[:14]     # 14 added to 20 real: batch 8 + 6
    split = apply_overrides(cfg, ["downstream.norm=split_recompute", "downstream.steps=4",
                                 "downstream.mixed_precision=no"]).downstream     # fp32: exact comparisons
    calls = []
    import core.train.image_classifier as ic
    real_build = ic.build_backbone

    def spied(*a, **k):
        model = real_build(*a, **k)
        batch_norms(model)[0].register_forward_pre_hook(     # the stem's BatchNorm: (training step?, momentum, images)
            lambda m, inp: calls.append((m.training and torch.is_grad_enabled(), m.momentum, inp[0].shape[0])))
        return model
    monkeypatch.setattr(ic, "build_backbone", spied)
    model, history = train_image_classifier(train, val, ["tumor", "stroma"], split, seed=0, extra_df=extra)
    real_batch, added_batch = history.attrs["real_batch"], history.attrs["added_batch"]
    assert (real_batch, added_batch) == (8, 6)
    steps = [(momentum, n) for training, momentum, n in calls if training]
    assert [n for momentum, n in steps if momentum != 0] == [real_batch] * split.steps, steps
    assert [n for momentum, n in steps if momentum == 0] == [added_batch] * split.steps, steps
    # recompute: the kept statistics are the real training images' (a fresh recompute on them
    # gives the same numbers); the added images would move them
    from core.evaluate.inference import load_images
    real_u8, _, _ = load_images(train["path"], split.image_size)
    kept = [(n.running_mean.clone(), n.running_var.clone()) for n in batch_norms(model)]
    recompute_running_stats(model, real_u8, real_batch)
    again = [(n.running_mean, n.running_var) for n in batch_norms(model)]
    assert all(torch.allclose(a, b, atol=1e-5) and torch.allclose(c, d, atol=1e-5)
               for (a, c), (b, d) in zip(kept, again))
    added_u8, _, _ = load_images(extra["path"], split.image_size)
    recompute_running_stats(model, torch.cat([real_u8, 255 - added_u8]), real_batch)
    assert not torch.allclose(batch_norms(model)[0].running_mean, kept[0][0], atol=1e-3)


def test_group_norm_has_no_batch_statistics(ws, cfg):
    splits = make_splits(ws, per_split={"train": 4, "val": 2})
    train, val = splits[splits.split == "train"], splits[splits.split == "val"]
    group = apply_overrides(cfg, ["downstream.norm=group", "downstream.steps=2", "downstream.evals=1"]).downstream
    model, _ = train_image_classifier(train, val, ["tumor", "stroma"], group, seed=0)
    assert not [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert any(isinstance(m, torch.nn.GroupNorm) for m in model.modules())


def test_tiny_validation_sets_keep_the_last_step_and_say_why(ws, cfg):
    splits = make_splits(ws, per_split={"train": 6, "val": 3})
    train, val = splits[splits.split == "train"], splits[splits.split == "val"]
    auto = apply_overrides(cfg, ["downstream.model_selection=auto", "downstream.min_val_per_class=4"]).downstream
    _, history = train_image_classifier(train, val, ["tumor", "stroma"], auto, seed=0)
    assert history.attrs["model_selection"].startswith("last (3 validation images in a class, fewer than")
    assert history.attrs["best_step"] == auto.steps
    enough = apply_overrides(cfg, ["downstream.model_selection=auto", "downstream.min_val_per_class=3"]).downstream
    _, history = train_image_classifier(train, val, ["tumor", "stroma"], enough, seed=0)
    assert history.attrs["model_selection"] == "validation"


def test_a_rewritten_image_is_decoded_again(tmp_path):
    """The decoded-image memo must not serve a stale image when a file is rewritten in place."""
    import os
    from PIL import Image
    path = tmp_path / "a.png"
    Image.new("RGB", (16, 16), (10, 10, 10)).save(path)
    first, _, _ = load_images([str(path)], 16)
    Image.new("RGB", (16, 16), (200, 200, 200)).save(path)
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))   # a new mtime even on coarse clocks
    second, _, _ = load_images([str(path)], 16)
    assert int(first.float().mean()) == 10 and int(second.float().mean()) == 200
