"""The protocol: `run_all` chains every stage (skipped by hash, resumed after a kill), tops up
short classes and runs the grid of baseline and augmented runs; the guidance tune-up, the demo
bundle, and the one compute slot the app's jobs share."""
from core.protocol.demo_models import export_demo, install_demo, verify_bundle
from core.protocol.experiment import plan_runs, run_all, run_grid
from core.protocol.jobs import JobBusy, JobRunner
from core.protocol.stages import is_done, mark_done, stage_key
from core.protocol.topup import draw_synthetic, top_up
from core.protocol.tune import tune_guidance

__all__ = ["JobBusy", "JobRunner", "draw_synthetic", "export_demo", "install_demo", "is_done", "mark_done",
           "plan_runs", "run_all", "run_grid", "stage_key", "top_up", "tune_guidance", "verify_bundle"]
