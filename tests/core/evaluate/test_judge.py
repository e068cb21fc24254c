"""The judge compares a synthetic image with the real images of its class: the k-NN realism
check (Kynkäänniemi et al.'s precision test per image), the colour / contrast range, and the
reference's centroid rule with an ensemble keeping only what its members agree on."""
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from core.config.checks import apply_overrides
from core.errors import UserError
from core.evaluate.inference import load_images, predict
from core.evaluate.judge import Judge, colour_stats, knn_radii, knn_ratio
from core.evaluate.quality_metrics import prdc
from core.evaluate.selection import apply_threshold, check_counts, score_synthetic, selection_report
from core.io import save_png
from core.models import load_filter_classifier
from core.train.filter_classifier import train_filter_classifier
from core.workspace import Workspace
from labdata import COLOURS, make_splits


def test_knn_ratio_is_the_precision_test_per_image():
    """Below 1 exactly for the images prdc's precision counts as inside the real manifold."""
    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=(40, 6)), rng.normal(0.8, 1.3, size=(60, 6))
    radii, k = knn_radii(real)
    ratio = knn_ratio(fake, real, radii)
    assert k == 5 and 0 < (ratio < 1).mean() < 1
    assert (ratio < 1).mean() == pytest.approx(prdc(real, fake)["precision"])
    assert (knn_ratio(real, real, radii) < 1e-6).all()               # a real image is its own ball's centre
    # a class of n <= k images uses k = n - 1; one image has no radius, so nothing is inside
    assert knn_radii(real[:3])[1] == 2
    assert np.isnan(knn_ratio(fake, real[:1], knn_radii(real[:1])[0])).all()


def test_colour_stats_are_channel_means_and_pixel_std():
    flat = np.zeros((2, 3, 8, 8), dtype=np.uint8)
    flat[0, 0], flat[1] = 200, np.arange(64, dtype=np.uint8).reshape(8, 8)
    stats = colour_stats(torch.as_tensor(flat))
    assert stats[0].tolist() == [200, 0, 0, 0]                       # flat, whatever its tint
    assert stats[1, :3].tolist() == [31.5] * 3 and stats[1, 3] == pytest.approx(np.arange(64).std(ddof=1))


def _glass(colour, size=32) -> Image.Image:
    return Image.fromarray(np.full((size, size, 3), colour, dtype=np.uint8))


@pytest.fixture(scope="module")
def judged(tmp_path_factory):
    """A trained two-member filter and a synthetic set per class: copies of real train images
    (as real as it gets), flat glass in the class's own mean colour, and the other class's tiles."""
    from core.config.presets import preset
    ws = Workspace(tmp_path_factory.mktemp("judged")).ensure()
    cfg = apply_overrides(preset("tiny"), ["filter_classifier.steps=18", "filter_classifier.batch_size=8",
                                     "filter_classifier.lr=0.01", "filter_classifier.members=2",
                                     "selection.threshold=0.0"])
    splits = make_splits(ws)
    train_filter_classifier(ws, cfg)
    rows = []
    for label, name in enumerate(("tumor", "stroma")):
        own = splits[(splits.split == "train") & (splits.label == label)].path.tolist()
        other = splits[(splits.split == "train") & (splits.label != label)].path.tolist()
        kinds = [("real", Image.open(p)) for p in own[:4]] + [("glass", _glass(COLOURS[label]))] * 3 + \
            [("other", Image.open(p)) for p in other[:4]]
        for i, (kind, image) in enumerate(kinds):
            rel = f"{name}/{kind}-{i}.png"
            save_png(image.convert("RGB"), ws.synthetic_dir / rel, {"class": name})
            rows.append({"file": rel, "class": name, "label": label, "kind": kind})
    manifest = pd.DataFrame(rows)
    manifest.drop(columns="kind").to_csv(ws.synthetic_manifest, index=False)
    scores = score_synthetic(ws, cfg).assign(kind=manifest["kind"])
    return ws, cfg, scores


def test_the_realism_checks_keep_real_looking_images_only(judged):
    ws, cfg, scores = judged
    by = scores.groupby("kind")
    assert (by.get_group("real")["knn_ratio"] < 1e-3).all() and by.get_group("real")["colour_ok"].all()
    assert not by.get_group("glass")["colour_ok"].any()              # no contrast: out of the std range
    assert (by.get_group("glass")["pixel_std"] == 0).all()
    other = by.get_group("other")
    assert not other["colour_ok"].any() and (other["knn_ratio"] > 1).all()
    reference = pd.read_csv(ws.real_reference).set_index("class")
    assert reference["n_real"].tolist() == [12, 12] and reference["k"].tolist() == [5, 5]
    assert (reference["pixel_std_lo"] > 0).all()

    kept = apply_threshold(scores, 0.0, realism=("knn", "colour"))
    assert set(kept.loc[kept["kept"], "kind"]) == {"real"}
    colour_only = apply_threshold(scores, 0.0, realism=("colour",))
    assert colour_only["kept"].tolist() == colour_only["pass_colour"].tolist()
    counts = check_counts(kept, ["tumor", "stroma"])
    assert counts.loc["tumor"].to_dict() == {"images": 11, "confidence": 11, "centroid": int(
        kept[kept["class"] == "tumor"]["pass_centroid"].sum()), "knn": 4, "colour": 4, "kept": 4}
    with pytest.raises(UserError, match="predate the knn check"):
        apply_threshold(scores.drop(columns="knn_ratio"), 0.0, realism=("knn",))


def test_real_validation_images_show_what_each_check_passes(judged):
    ws, cfg, _ = judged
    report = selection_report(ws, apply_overrides(cfg, ["selection.realism=knn,colour"]))
    assert report["val_images"].tolist() == [6, 6] and report["images"].tolist() == [11, 11]
    assert (report["val_confidence"] == 6).all()                     # the threshold is 0
    assert (report["val_kept"] <= report[["val_knn", "val_colour"]].min(axis=1)).all()
    assert (report["kept"] == 4).all()


class _Member(torch.nn.Module):
    """A stand-in ensemble member: its features are the input's channel means, its logits a
    fixed linear map of them (timm's forward_features / forward_head / get_classifier)."""

    def __init__(self, weight):
        super().__init__()
        self.head = torch.nn.Linear(3, 2, bias=False)
        self.head.weight.data = torch.tensor(weight, dtype=torch.float32)

    def forward_features(self, x):
        return x.float().mean((2, 3))

    def forward_head(self, f, pre_logits=False):
        return f if pre_logits else self.head(f)

    def get_classifier(self):
        return self.head


def test_members_that_disagree_on_the_nearest_centroid_pass_no_centroid_check():
    """Red and blue tiles: both members' nearest centroid is their own class. Purple: member 0
    puts it nearest class a, member 1 nearest b, so it is nobody's, whichever its target."""
    norm = torch.nn.functional.normalize
    members = [(_Member([[1, 0, 0], [0, 0, 1]]), norm(torch.tensor([[1., -1, 0], [-1, -1, 1]]), dim=1)),
               (_Member([[2, 0, 0], [0, 0, 2]]), norm(torch.tensor([[1., -1, -1], [0, -1, 1]]), dim=1))]
    judge = Judge(members=members, info={"classes": ["a", "b"], "image_size": 8}, reference={})
    colours = [(255, 0, 0), (0, 0, 255), (255, 0, 255), (255, 0, 255), (0, 0, 255)]
    images = torch.stack([torch.tensor(c, dtype=torch.uint8).view(3, 1, 1).expand(3, 8, 8) for c in colours])
    target = np.array([0, 1, 0, 1, 0])
    out = judge.score(images, target)
    assert out["nearest"].tolist() == [0, 1, -1, -1, 1]
    scores = pd.DataFrame({"class": np.array(["a", "b"])[target], "confidence": out["confidence"],
                           "nearest_class": np.array(["a", "b", ""])[out["nearest"]],
                           "centroid_distance": out["centroid_distance"]})
    assert apply_threshold(scores, 0.0, strategy="centroid")["kept"].tolist() == [True, True, False, False, False]
    # confidence: the least sure member's p(target): member 0 (softmax of +-1) for the red tile as
    # a, member 1 (+-2) for the blue tile as a
    assert out["confidence"][0] == pytest.approx(1 / (1 + np.exp(-2)), abs=0.01)
    assert out["confidence"][4] == pytest.approx(1 / (1 + np.exp(4)), abs=0.01)


def test_an_ensemble_keeps_what_its_members_agree_on(judged):
    """Confidence is the smallest member's p(target); the nearest centroid counts only when every
    member's nearest centroid is the same class, and the centroid rule keeps only those."""
    ws, cfg, scores = judged
    images, keep, _ = load_images([ws.synthetic_dir / f for f in scores["file"]], 32)
    target = scores["label"].to_numpy().copy()
    probs, nearest = [], []
    for member in (0, 1):
        model, _, cent = load_filter_classifier(ws, member)
        p, feats = predict(model, images)
        probs.append(p[np.arange(len(target)), target].numpy())
        nearest.append((1 - feats / feats.norm(dim=1, keepdim=True) @ cent.T).argmin(1).numpy())
    assert scores["confidence"].to_numpy() == pytest.approx(np.minimum(*probs), abs=1e-6)
    both = (nearest[0] == target) & (nearest[1] == target)
    centroid = apply_threshold(scores, 0.0, strategy="centroid")
    assert centroid["kept"].tolist() == both.tolist()
    split = nearest[0] != nearest[1]
    assert (scores.loc[split, "nearest_class"].fillna("") == "").all()
