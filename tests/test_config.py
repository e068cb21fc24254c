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
