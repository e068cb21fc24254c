"""Judging images and runs: the filter classifier's scores and the selection rule, quality and
memorisation of synthetic sets against their real floor, metrics, intervals and the summary."""
from core.evaluate.features import embed_files, feature_space
from core.evaluate.inference import load_images, predict
from core.evaluate.metrics import at_chance, classification_metrics, paired_bootstrap, paired_interval
from core.evaluate.quality import measure_quality, quality_summary, real_reference
from core.evaluate.selection import (apply_threshold, calibrate, current_selection, export_accepted,
                                     load_thresholds, score_synthetic, select)
from core.evaluate.summary import summarize
from core.evaluate.summary_tables import markdown_table

__all__ = ["apply_threshold", "at_chance", "calibrate", "classification_metrics", "current_selection",
           "embed_files", "export_accepted", "feature_space", "load_images", "load_thresholds", "markdown_table",
           "measure_quality", "paired_bootstrap", "paired_interval", "predict", "quality_summary",
           "real_reference", "score_synthetic", "select", "summarize"]
