import pandas as pd
import pytest

from core.protocol.arms import PARTS, BudgetPools, draw_arm, unlabeled_pool
from core.protocol.grid import plan_runs
from core.config.checks import apply_overrides


def _pools() -> BudgetPools:
    accepted = pd.DataFrame({"path": [f"acc0-{i}" for i in range(20)] + ["acc1-0"], "label": [0] * 20 + [1]})
    generated = pd.DataFrame({"path": [f"gen0-{i}" for i in range(30)] + [f"gen1-{i}" for i in range(10)],
                              "label": [0] * 30 + [1] * 10, "present": [True] * 25 + [False] * 5 + [True] * 10})
    pseudo = pd.DataFrame({"path": [f"ps0-{i}" for i in range(3)] + [f"ps1-{i}" for i in range(5)],
                           "label": [0] * 3 + [1] * 5, "confidence": 0.95, "hidden_label": [0, 0, 1, 1, 1, 1, 1, 0]})
    return BudgetPools(accepted, generated, pseudo, {})


def _counts(frame: pd.DataFrame, source: str) -> dict:
    return frame[frame["source"] == source]["label"].value_counts().sort_index().to_dict()


def test_each_competitor_arm_gets_exactly_the_selected_arms_count():
    """Per class, every arm adds what the selected draw realised (8 of class 0; 1 of class 1,
    short of its 2 wanted): unselected from the generated images present, pseudo-labelled from
    the confident pool (class 0 has 3: short, reported), both sets for selected+pseudo."""
    real = pd.DataFrame({"path": [f"r{i}" for i in range(10)], "label": [0] * 8 + [1] * 2})
    pools = _pools()
    frames = {arm: draw_arm(arm, pools, real, 1.0, seed=3) for arm in PARTS}
    selected, report = frames["selected"]
    assert _counts(selected, "synthetic") == {0: 8, 1: 1}
    assert report["synthetic"][1] == {"wanted": 2, "drawn": 1, "accepted": 1}
    unselected, report = frames["unselected"]
    assert _counts(unselected, "unselected") == {0: 8, 1: 1} and set(unselected["source"]) == {"unselected"}
    assert unselected["path"].isin(pools.generated[pools.generated["present"]]["path"]).all()
    assert report["unselected"][0] == {"wanted": 8, "drawn": 8, "available": 25, "generated": 30}
    pseudo, report = frames["pseudo"]
    assert _counts(pseudo, "pseudo") == {0: 3, 1: 1}
    assert report["pseudo"][0]["wanted"] == 8 and report["pseudo"][0]["drawn"] == 3
    assert report["pseudo"][0]["correct"] == 2                       # hidden labels: reported only
    both, report = frames["selected+pseudo"]
    assert _counts(both, "synthetic") == {0: 8, 1: 1} and _counts(both, "pseudo") == {0: 3, 1: 1}
    # the same draws as the single arms: arms differ in what they add, not in which
    assert set(both[both.source == "synthetic"].path) == set(selected.path)
    assert set(both[both.source == "pseudo"].path) == set(pseudo.path)
    assert list(both.columns) == ["path", "label", "source"]
    again = draw_arm("unselected", pools, real, 1.0, seed=3)[0]
    assert again["path"].tolist() == unselected["path"].tolist()
    assert draw_arm("unselected", pools, real, 1.0, seed=4)[0]["path"].tolist() != unselected["path"].tolist()


def test_pseudo_pool_is_the_labeled_pool_outside_the_budget_never_test():
    splits = pd.DataFrame({"path": list("abcdefg"), "label": 0, "split": ["train", "train", "val", "val", "test",
                                                                        "test", "train"]})
    labels = splits.iloc[[0, 2]]
    assert unlabeled_pool(splits, labels)["path"].tolist() == ["b", "d", "g"]


def test_plan_has_each_arm_per_ratio_and_per_budget_seeds(tiny_cfg):
    cfg = apply_overrides(tiny_cfg, ["experiment.label_fractions=1.0,0.5", "experiment.synthetic_ratios=0.5,1",
                                     "experiment.arms=selected,unselected,pseudo,selected+pseudo",
                                     "experiment.seeds=0,1", "experiment.budget_seeds=f0.5=3"])
    plan = pd.DataFrame(plan_runs(cfg))
    at_all = plan[plan.label_fraction == 1.0]
    # the whole pool is labeled at 1.0: nothing is left to pseudo-label, those arms are not planned
    assert sorted(at_all.groupby("arm").size().items()) == [("baseline", 2), ("selected", 4), ("unselected", 4)]
    half = plan[plan.label_fraction == 0.5]
    assert sorted(half.seed.unique()) == [0, 1, 2]
    assert half.groupby("arm").size().to_dict() == {"baseline": 3, "pseudo": 6, "selected": 6,
                                                   "selected+pseudo": 6, "unselected": 6}
    with pytest.raises(Exception, match="experiment.arms"):
        apply_overrides(tiny_cfg, ["experiment.arms=selected,magic"])
    with pytest.raises(Exception, match="BUDGET=N"):
        apply_overrides(tiny_cfg, ["experiment.budget_seeds=f0.5"])
