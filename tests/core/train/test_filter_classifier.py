"""The filter classifier is a judge of its own: its section, its seed(s), never a baseline run."""
import pytest
import torch
from safetensors.torch import load_file

from core.config.checks import apply_overrides
from core.config.store import from_dict, identity, to_dict
from core.errors import UserError
from core.io import file_sha256
from core.models import load_filter_members
from core.protocol.stages import stage_key
from core.train.filter_classifier import baseline_twin, train_filter_classifier
from core.train.image_classifier import train_image_classifier
from core.workspace import Workspace
from labdata import make_splits

FAST = ["filter_classifier.steps=8", "filter_classifier.evals=2", "filter_classifier.batch_size=8",
        "downstream.steps=8", "downstream.evals=2", "downstream.batch_size=8"]


@pytest.fixture
def ws(tmp_path):
    ws = Workspace(tmp_path / "ws").ensure()
    make_splits(ws)
    return ws


@pytest.fixture
def cfg(tiny_cfg):
    return apply_overrides(tiny_cfg, FAST)


def _weights(ws: Workspace) -> dict[str, torch.Tensor]:
    return load_file(str(Workspace.weights_of(ws.filter_classifier_dir)))


def test_the_filter_reads_only_its_own_section(ws, cfg):
    """Changing downstream training changes neither the filter stage's key nor its weights (bit
    for bit); changing the filter's section changes both."""
    other_downstream = apply_overrides(cfg, ["downstream.steps=3", "downstream.lr=0.05",
                                             "downstream.label_smoothing=0.3", "downstream.batch_size=4"])
    assert stage_key(ws, cfg, "filter_classifier") == stage_key(ws, other_downstream, "filter_classifier")
    assert stage_key(ws, cfg, "filter_classifier") != \
        stage_key(ws, apply_overrides(cfg, ["filter_classifier.seed=7"]), "filter_classifier")
    train_filter_classifier(ws, cfg)
    first = file_sha256(Workspace.weights_of(ws.filter_classifier_dir))
    train_filter_classifier(ws, other_downstream)
    assert file_sha256(Workspace.weights_of(ws.filter_classifier_dir)) == first
    train_filter_classifier(ws, apply_overrides(cfg, ["filter_classifier.seed=7"]))
    assert file_sha256(Workspace.weights_of(ws.filter_classifier_dir)) != first


def test_the_filter_is_not_the_seed_0_baseline(ws, cfg):
    """Same settings, same images: only the seed tells the filter from a grid run, so it must be
    its own (1000 by default), and the seed-0 baseline's weights are not the filter's."""
    from core.data.budget import budget_labels
    assert cfg.filter_classifier.seed == 1000 and 1000 not in cfg.experiment.seeds
    train_filter_classifier(ws, cfg)
    labels, classes = budget_labels(ws, cfg)
    baseline, _ = train_image_classifier(labels[labels.split == "train"], labels[labels.split == "val"],
                                         classes, cfg.downstream, seed=0)
    filt, base = _weights(ws), baseline.state_dict()
    assert any(not torch.equal(filt[k], base[k]) for k in filt)


def test_a_filter_that_would_be_a_baseline_run_is_refused(ws, cfg):
    twin = apply_overrides(cfg, ["filter_classifier.seed=1"])           # experiment.seeds = 0, 1, 2
    assert baseline_twin(twin) == 1 and baseline_twin(cfg) is None
    with pytest.raises(UserError, match="filter_classifier.seed: seed 1 is in experiment.seeds"):
        train_filter_classifier(ws, twin)
    assert not ws.filter_classifier_dir.exists()
    # other settings make it another model, whatever its seed
    assert baseline_twin(apply_overrides(twin, ["filter_classifier.steps=9"])) is None
    assert baseline_twin(apply_overrides(twin, ["filter_classifier.members=3", "filter_classifier.seed=5"])) is None
    assert baseline_twin(apply_overrides(twin, ["filter_classifier.members=3", "filter_classifier.seed=0"])) == 0


def test_an_ensemble_saves_one_member_per_seed(ws, cfg):
    out = train_filter_classifier(ws, apply_overrides(cfg, ["filter_classifier.members=2"]))
    assert out["members"] == 2 and len(out["member_val_balanced_accuracy"]) == 2
    members, info = load_filter_members(ws)
    assert len(members) == 2 and info["seeds"] == [1000, 1001]
    assert (ws.filter_classifier_dir / "members" / "1" / "model.safetensors").exists()
    a, b = (m.state_dict() for m, _ in members)
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_saved_configs_keep_the_seed_their_filter_was_trained_with(tiny_cfg):
    """A config saved before filter_classifier.seed trained its filter with seed 0: it loads as 0
    and keys as before (its stages stay done); today's default 1000 keys anew."""
    saved = to_dict(tiny_cfg)
    for name in ("seed", "members"):
        saved["filter_classifier"].pop(name)
    legacy = from_dict(saved).filter_classifier
    assert legacy.seed == 0 and "seed" not in identity(legacy) and "members" not in identity(legacy)
    assert identity(tiny_cfg.filter_classifier)["seed"] == 1000
