"""The label budget: one subset per budget, nested across budgets, validation inside it, clear errors."""
import pandas as pd
import pytest

from core.data.budget import budget_name, budget_of, budget_views, draw_labels, realised
from core.errors import UserError
from core.config.checks import apply_overrides
from core.workspace import Workspace

CLASSES = ["ADI", "TUM", "MUC"]


def _splits(train: dict, val: dict, test: int = 3) -> pd.DataFrame:
    rows = []
    for label, c in enumerate(CLASSES):
        for split, n in (("train", train[c]), ("val", val[c]), ("test", test)):
            rows += [{"path": f"/d/{split}/{c}/{i:04d}.png", "label": label, "class_name": c, "split": split}
                     for i in range(n)]
    return pd.DataFrame(rows)


SPLITS = _splits({"ADI": 80, "TUM": 40, "MUC": 20}, {"ADI": 20, "TUM": 10, "MUC": 5})


def test_fraction_keeps_each_part_in_proportion_and_never_reads_test():
    labels = draw_labels(SPLITS, CLASSES, 0.25, seed=0)
    got = labels.groupby(["class_name", "split"]).size().to_dict()
    assert got == {("ADI", "train"): 20, ("ADI", "val"): 5, ("TUM", "train"): 10, ("TUM", "val"): 2,
                   ("MUC", "train"): 5, ("MUC", "val"): 1}
    assert not labels.path.str.contains("/test/").any()
    assert list(labels.columns) == ["path", "label", "class_name", "split"]
    # val rows come from the pool's val part, train rows from its train part
    assert labels[labels.split == "val"].path.str.contains("/val/").all()


def test_all_labels_is_the_pool_and_budgets_are_nested_and_reproducible():
    full = draw_labels(SPLITS, CLASSES, 1.0, seed=0)
    pool = SPLITS[SPLITS.split != "test"]
    assert set(full.path) == set(pool.path)
    small, mid = (set(draw_labels(SPLITS, CLASSES, f, seed=0).path) for f in (0.1, 0.5))
    assert small < mid < set(full.path)
    assert set(draw_labels(SPLITS.sample(frac=1, random_state=1), CLASSES, 0.1, seed=0).path) == small
    assert set(draw_labels(SPLITS, CLASSES, 0.1, seed=1).path) != small


def test_count_per_class_and_what_was_delivered():
    labels = draw_labels(SPLITS, CLASSES, 30, seed=0)
    per = labels.groupby("class_name").size().to_dict()
    assert per == {"ADI": 30, "TUM": 30, "MUC": 25}          # MUC has only 25 labeled images
    out = realised(labels, SPLITS, 30)
    assert out["MUC"] == {"train": 20, "val": 5, "pool": 25, "asked": 30}
    assert out["ADI"]["train"] + out["ADI"]["val"] == 30


def test_a_budget_that_leaves_a_class_too_few_images_names_it():
    with pytest.raises(UserError, match=r"label fraction 0.02 .*MUC: 0 of 25"):
        draw_labels(SPLITS, CLASSES, 0.02, seed=0)
    from core.errors import ConfigError
    from core.config.presets import preset
    with pytest.raises(ConfigError, match="whole number of images per class"):
        apply_overrides(preset("tiny"), ["experiment.label_fractions=1.5"])


def test_fewer_than_two_classes_or_a_vanished_class_is_an_error():
    one = SPLITS[(SPLITS.class_name == "ADI") | (SPLITS.split == "test")]
    with pytest.raises(UserError, match="1 usable class"):
        draw_labels(one[one.class_name == "ADI"], ["ADI"], 1.0, seed=0)
    with pytest.raises(UserError, match="TUM, MUC have test images but no usable labeled image"):
        draw_labels(one, CLASSES, 1.0, seed=0)


def test_views_put_the_first_budget_at_the_root(tmp_path, tiny_cfg):
    cfg = apply_overrides(tiny_cfg, ["experiment.label_fractions=0.25,1.0,20"])
    views = budget_views(Workspace(tmp_path), cfg)
    assert [v for v, _ in views] == [0.25, 1.0, 20]
    assert views[0][1].latent_classifier_dir == tmp_path.resolve() / "models" / "latent_classifier"
    assert views[1][1].filter_classifier_dir == tmp_path.resolve() / "budgets" / "f1" / "models" / "filter_classifier"
    assert views[2][1].synthetic_dir == tmp_path.resolve() / "budgets" / "n20" / "synthetic"
    assert views[2][1].unet_dir == views[0][1].unet_dir               # pre-training is shared
    assert [budget_of(w, cfg) for _, w in views] == [0.25, 1.0, 20]
    assert budget_name(0.1) == "f0.1" and budget_name(20) == "n20"
