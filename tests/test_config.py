import numpy as np
import pytest

from core.config import ConfigError, apply_overrides, config_hash, from_dict, preset, to_dict


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
    from core.pretrain import build_scheduler
    cfg = preset("paper").pretrain
    alphas_cumprod = build_scheduler(cfg).alphas_cumprod.double().numpy()
    betas = np.linspace(0.0015 ** 0.5, 0.0155 ** 0.5, 1000, dtype=np.float64) ** 2
    reference = np.cumprod(1 - betas)
    for t in (250, 500, 750):
        assert alphas_cumprod[t] == pytest.approx(reference[t], rel=1e-5)
    assert alphas_cumprod[500] == pytest.approx(0.150, abs=5e-4)


def test_overrides_parse_types_and_name_bad_fields():
    cfg = apply_overrides(preset("tiny"), ["pretrain.steps=7", "sampling.guidance_scale=2.5",
                                           "experiment.seeds=0,1,2", "classifier.noise_aware=false"])
    assert cfg.pretrain.steps == 7 and cfg.sampling.guidance_scale == 2.5
    assert cfg.experiment.seeds == (0, 1, 2) and cfg.classifier.noise_aware is False
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

    from core.config import identity, preset
    s = preset("demo").sampling
    assert identity(replace(s, compile=True)) == identity(s)
    assert "compile" not in identity(s) and "classifier_precision" not in identity(s)
    assert identity(replace(s, classifier_precision="bf16"))["classifier_precision"] == "bf16"
    assert identity(replace(s, guidance_scale=7.0)) != identity(s)


def test_sampling_speed_fields_parse_and_validate():
    import pytest

    from core.config import ConfigError, apply_overrides, preset
    cfg = apply_overrides(preset("tiny"), ["sampling.compile=true", "sampling.classifier_precision=bf16"])
    assert cfg.sampling.compile is True and cfg.sampling.classifier_precision == "bf16"
    with pytest.raises(ConfigError, match="sampling.classifier_precision"):
        apply_overrides(preset("tiny"), ["sampling.classifier_precision=fp8"])
