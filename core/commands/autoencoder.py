"""`python -m core autoencoder`: train the KL autoencoder (core.train.autoencoder) from the shell."""
from __future__ import annotations

import argparse

from core.train.autoencoder import train_autoencoder
from core.cli import ProgressReporter, add_common, guarded, resolve_config, workspace


@guarded
def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m core autoencoder",
                                     description="Train the KL autoencoder on the unlabeled pools.")
    add_common(parser)
    args = parser.parse_args(argv)
    cfg = resolve_config(args)
    ws = workspace(args)
    with ProgressReporter() as progress:
        out = train_autoencoder(ws, cfg, progress=progress, stop=None)
    if out.get("stopped"):
        print(f"{out['reason']} at step {out['step']}; checkpoint saved; rerun the same command to resume")
        return 130 if out["reason"] == "interrupted" else 0
    print(f"autoencoder saved to {ws.autoencoder_dir}: " + ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in out.items()))
    return 0
