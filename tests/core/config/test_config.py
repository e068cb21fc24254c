import numpy as np
import pytest

from core.errors import ConfigError
from core.config.checks import apply_overrides
from core.config.store import config_hash, from_dict, to_dict
from core.config.presets import preset


@pytest.mark.parametrize("name", ["tiny", "demo", "paper"])
def test_presets_validate_and_roundtrip(name):
    cfg = preset(name)
    assert from_dict(to_dict(cfg)) == cfg
    assert cfg.latent_size * cfg.autoencoder.downsample_factor == cfg.data.image_size


def test_paper_preset_matches_reference_shapes():
    cfg = preset("paper")
    assert cfg.data.image_size == 256 and cfg.latent_size == 64
    assert cfg.autoencoder.latent_channels == 3
    assert cfg.pretrain.block_out_channels == (192, 384, 384, 768, 768)
    assert (cfg.pretrain.beta_start, cfg.pretrain.beta_end) == (0.0015, 0.0155)


def test_paper_scheduler_has_ldm_linear_betas():
    """LDM's "linear" is linear in sqrt(beta); diffusers' "linear" shares only the endpoints
    (alpha-bar at t=500: 0.150 vs 0.081), so alpha-bar is pinned mid-schedule, not the betas' ends."""
    from core.models import build_scheduler
    cfg = preset("paper").pretrain
    alphas_cumprod = build_scheduler(cfg).alphas_cumprod.double().numpy()
    betas = np.linspace(0.0015 ** 0.5, 0.0155 ** 0.5, 1000, dtype=np.float64) ** 2
    reference = np.cumprod(1 - betas)
    for t in (250, 500, 750):
        assert alphas_cumprod[t] == pytest.approx(reference[t], rel=1e-5)
    assert alphas_cumprod[500] == pytest.approx(0.150, abs=5e-4)


def test_overrides_parse_types_and_name_bad_fields():
    cfg = apply_overrides(preset("tiny"), ["pretrain.steps=7", "sampling.guidance_scale=2.5",
                                           "experiment.seeds=0,1,2", "latent_classifier.noise_aware=false"])
    assert cfg.pretrain.steps == 7 and cfg.sampling.guidance_scale == 2.5
    assert cfg.experiment.seeds == (0, 1, 2) and cfg.latent_classifier.noise_aware is False
    with pytest.raises(ConfigError, match="pretrain.steps"):
        apply_overrides(cfg, ["pretrain.steps=-1"])
    with pytest.raises(ConfigError, match="pretrain.nope"):
        apply_overrides(cfg, ["pretrain.nope=1"])
    with pytest.raises(ConfigError, match="preset"):
        preset("huge")
    with pytest.raises(ConfigError, match="divisible"):
        apply_overrides(cfg, ["data.image_size=30"])


def test_config_hash_is_stable_and_sensitive():
    a, b = preset("tiny"), preset("tiny")
    assert config_hash(a) == config_hash(b)
    assert config_hash(a) != config_hash(apply_overrides(a, ["pretrain.steps=3"]))


def test_identity_leaves_out_speed_switches_and_unset_new_fields():
    """Stage markers and grid run keys hash `identity(section)`: turning on torch.compile must not
    make finished stages stale, and adding a field at its default must not either."""
    from dataclasses import replace

    from core.config.store import identity
    from core.config.presets import preset
    s = preset("demo").sampling
    assert identity(replace(s, compile=True)) == identity(s)
    assert "compile" not in identity(s) and "classifier_precision" not in identity(s)
    assert identity(replace(s, classifier_precision="bf16"))["classifier_precision"] == "bf16"
    assert identity(replace(s, guidance_scale=7.0)) != identity(s)


def test_sampling_speed_fields_parse_and_validate():
    import pytest

    from core.errors import ConfigError
    from core.config.checks import apply_overrides
    from core.config.presets import preset
    cfg = apply_overrides(preset("tiny"), ["sampling.compile=true", "sampling.classifier_precision=bf16"])
    assert cfg.sampling.compile is True and cfg.sampling.classifier_precision == "bf16"
    with pytest.raises(ConfigError, match="sampling.classifier_precision"):
        apply_overrides(preset("tiny"), ["sampling.classifier_precision=fp8"])


@pytest.mark.parametrize("override, message", [
    ("pretrain.steps=true", "pretrain.steps expects an integer"),
    ("experiment.label_fractions=abc", "experiment.label_fractions expects a list of numbers"),
    ("experiment.seeds=1.5", "experiment.seeds expects a list of integers"),
    ("pretrain.warmup_steps=-10", r"pretrain.warmup_steps must be >= 0"),
    ("autoencoder.kl_weight=-1", r"autoencoder.kl_weight must be >= 0"),
    ("autoencoder.save_dtype=bf16", "autoencoder.save_dtype must be 'fp32' or 'fp16'"),
    ("data.num_workers=-3", r"data.num_workers must be >= 0"),
    ("pretrain.ema_decay=5", r"pretrain.ema_decay must be in \[0, 1\]"),
    ("sampling.eta=5", r"sampling.eta must be in \[0, 1\]"),
    ("pretrain.lr=NaN", r"pretrain.lr must be > 0"),
    ("sampling.compile=maybe", "sampling.compile expects true/false"),
    ("downstream.label_smoothing=1", r"downstream.label_smoothing must be in \[0, 1\)"),
])
def test_every_field_is_type_and_range_checked(override, message, capsys):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(preset("tiny"), [override])
    from core.__main__ import main
    assert main(["filter-classifier", "--workspace", "/nonexistent/ws", "--preset", "tiny", "--set", override]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and override.split("=")[0] in err[0]


def test_a_field_added_later_is_checked_without_being_listed():
    from dataclasses import make_dataclass

    from core.config.declare import check_fields
    section = make_dataclass("NewSection", [("steps", int, 1), ("ratio", float, 0.5)])
    check_fields(section(), "newsection")
    with pytest.raises(ConfigError, match=r"newsection.steps must be >= 0, got -1"):
        check_fields(section(steps=-1), "newsection")
    with pytest.raises(ConfigError, match="newsection.steps expects an integer, got True"):
        check_fields(section(steps=True), "newsection")


def test_saved_configs_still_load_and_bad_ones_name_the_field():
    import json
    from pathlib import Path

    from core.config.store import load_config
    bundled = Path(__file__).resolve().parents[3] / "assets" / "demo_models" / "config.json"
    assert load_config(bundled).preset == "demo"
    saved = json.loads(json.dumps(to_dict(preset("demo"))))         # as written to config.json
    assert from_dict(saved) == preset("demo")
    saved["pretrain"]["ema_decay"] = 2
    with pytest.raises(ConfigError, match="pretrain.ema_decay"):
        from_dict(saved)


def test_batch_size_keys_stages_but_not_the_demo_bundle():
    """A seed's pixels depend on the batch it was sampled in (batched kernels round differently),
    so the batch size is part of the sampling key; at the demo's 128 it is left out, so the
    bundled stage markers made at 128 stay valid."""
    from dataclasses import replace

    from core.config.store import identity
    demo = preset("demo").sampling
    assert demo.batch_size == 128 and "batch_size" not in identity(demo)
    assert identity(replace(demo, batch_size=64)) != identity(demo)
    assert identity(preset("tiny").sampling)["batch_size"] == 8


def test_cli_and_app_resolve_the_same_config(tmp_path):
    """One resolution for both: the named preset, else the workspace's saved config, else demo;
    then overrides, as --set text or as the app's typed widget values."""
    import argparse

    from app.context import AppContext
    from core.cli import resolve_config
    from core.config.store import save_config
    from core.config.presets import config_for
    from core.workspace import Workspace
    ws = Workspace(tmp_path / "ws").ensure()
    assert config_for(ws) == preset("demo") == AppContext.create(ws.root).config
    saved = apply_overrides(preset("tiny"), ["pretrain.steps=7"])
    save_config(saved, ws.root)
    args = argparse.Namespace(workspace=ws.root, preset=None, overrides=["sampling.eta=0.5"])
    assert resolve_config(args) == AppContext.create(ws.root, overrides=["sampling.eta=0.5"]).config
    assert resolve_config(args).pretrain.steps == 7 and resolve_config(args).sampling.eta == 0.5
    assert config_for(str(ws.root), "paper") == preset("paper")
    # the app's values take the same typed path: a number box's 5.0 is the int field's 5
    ctx = AppContext.create(ws.root)
    cfg = ctx.with_overrides("experiment", {"seeds": (0, 1)})
    assert cfg.experiment.seeds == (0, 1)
    assert ctx.with_overrides("pretrain", {"steps": 5.0, "lr": 1}).pretrain.steps == 5
    with pytest.raises(ConfigError, match="pretrain.steps expects an integer, got 4.5"):
        ctx.with_overrides("pretrain", {"steps": 4.5})
    with pytest.raises(ConfigError, match="unknown field 'pretrain.nope'"):
        ctx.with_overrides("pretrain", {"nope": 1})


@pytest.mark.parametrize("change, fault", [
    (lambda d: "{not json", "not valid JSON"),
    (lambda d: "[]", "expected a JSON object of config sections, got a list"),
    (lambda d: {**d, "autoencoder": {**d["autoencoder"], "block_out_channels": 8}},
     "autoencoder.block_out_channels expects a list of integers, got 8"),
    (lambda d: {**d, "sampling": {**d["sampling"], "steps": "many"}}, "sampling.steps expects an integer"),
    (lambda d: {**d, "sampling": 5}, "sampling must be an object of fields"),
    (lambda d: {**d, "samplign": {}}, "unknown config section(s) 'samplign'"),
    (lambda d: {}, "the key 'preset' is missing"),
])
def test_a_malformed_saved_config_is_one_line_naming_file_key_and_fault(tmp_path, capsys, change, fault):
    """Never a traceback, never a silent fallback to a preset: the file, the key, the fault."""
    import json

    from core.__main__ import main
    from core.config.store import load_config
    from core.config.presets import config_for
    ws = tmp_path / "ws"
    ws.mkdir()
    saved = change(json.loads(json.dumps(to_dict(preset("tiny")))))
    (ws / "config.json").write_text(saved if isinstance(saved, str) else json.dumps(saved))
    for load in (lambda: load_config(ws / "config.json"), lambda: config_for(ws)):
        with pytest.raises(ConfigError) as e:
            load()
        assert str(ws / "config.json") in str(e.value) and fault in str(e.value)
    assert main(["select", "--workspace", str(ws)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fault in err[0] and str(ws / "config.json") in err[0]
