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
    model, history = train_image_classifier(train, val, classes, cfg.downstream, seed=0)
    assert list(history.columns[:4]) == ["step", "epoch", "train_loss", "lr"]
    assert history["step"].tolist() == [3, 6, 9] and history.attrs["steps"] == 9
    best = history.loc[history["val_balanced_accuracy"].idxmax()]
    assert history.attrs["best_step"] == best["step"]
    assert history.attrs["best_val_balanced_accuracy"] == best["val_balanced_accuracy"]
    assert str(bad) in history.attrs["skipped"]
    metrics = metrics_on_test(model, test, classes, cfg.downstream)
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
    epochs = apply_overrides(cfg, ["downstream.compute=epochs", "downstream.epochs=2", "downstream.batch_size=17"]).downstream
    _, history = train_image_classifier(train, val, ["tumor", "stroma"], epochs, seed=0)
    assert history.attrs["steps"] == 2 and history.attrs["batch_size"] == 17 and history.attrs["n_train"] == 18
    big = apply_overrides(cfg, ["downstream.batch_size=64"]).downstream            # a few-label set
    _, history = train_image_classifier(train, val, ["tumor", "stroma"], big, seed=0)
    assert history.attrs["batch_size"] == 18 and history.attrs["steps"] == big.steps


def test_step_budget_gives_every_arm_the_same_optimizer_steps(ws, cfg):
    splits = make_splits(ws, per_split={"train": 6, "val": 2})
    train, val = splits[splits.split == "train"], splits[splits.split == "val"]
    extra = pd.concat([train] * 3, ignore_index=True)                            # 4x the images
    _, base = train_image_classifier(train, val, ["tumor", "stroma"], cfg.downstream, seed=0)
    _, aug = train_image_classifier(train, val, ["tumor", "stroma"], cfg.downstream, seed=0, extra_df=extra)
    assert base.attrs["steps"] == aug.attrs["steps"] == cfg.downstream.steps
    assert aug.attrs["n_train"] == 4 * base.attrs["n_train"]
    epochs = apply_overrides(cfg, ["downstream.compute=epochs", "downstream.epochs=1"]).downstream
    _, base = train_image_classifier(train, val, ["tumor", "stroma"], epochs, seed=0)
    _, aug = train_image_classifier(train, val, ["tumor", "stroma"], epochs, seed=0, extra_df=extra)
    # the option says so: one optimizer step per full batch, so more images take more steps
    assert (base.attrs["steps"], aug.attrs["steps"]) == (12 // 8, 48 // 8)


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
