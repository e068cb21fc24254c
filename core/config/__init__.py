"""Configs: one frozen `LabConfig` of sections (data, autoencoder, pretrain, latent_classifier,
sampling, selection, filter_classifier, downstream, experiment), the presets, `--set` overrides,
the JSON the workspace keeps (older saved configs migrate on load), and each field's declared
range and choices (`field_range`, `choices`, `check_value`)."""
from core.config.checks import apply_overrides, check_value, choices, field_range
from core.config.declare import Range, spec
from core.config.lab_config import (PRESETS, AutoencoderConfig, DataConfig, DownstreamConfig, ExperimentConfig,
                                    FilterClassifierConfig, ImageClassifierConfig, LabConfig,
                                    LatentClassifierConfig, PretrainConfig, SamplingConfig, SelectionConfig)
from core.config.presets import config_for, preset
from core.config.store import config_hash, from_dict, identity, load_config, save_config, to_dict
from core.errors import ConfigError

__all__ = ["PRESETS", "AutoencoderConfig", "ConfigError", "DataConfig", "DownstreamConfig", "ExperimentConfig",
           "FilterClassifierConfig", "ImageClassifierConfig", "LabConfig", "LatentClassifierConfig",
           "PretrainConfig", "Range", "SamplingConfig", "SelectionConfig", "apply_overrides", "check_value",
           "choices", "config_for", "config_hash", "field_range", "from_dict", "identity", "load_config",
           "preset", "save_config", "spec", "to_dict"]
