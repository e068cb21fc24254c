"""`python -m core pretrain`: pre-train the latent diffusion UNet (core.train.pretrain) from the shell;
under torchrun / accelerate launch every rank runs it and rank 0 reports."""
from __future__ import annotations

import argparse
import os
import shutil

from core.cli import ProgressReporter, add_common, guarded, resolve_config, workspace
from core.train.pretrain import STAGE, pretrain


@guarded
def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m core pretrain",
                                     description="Pre-train the unconditional latent diffusion UNet.")
    add_common(parser)
    parser.add_argument("--restart", action="store_true", help="discard checkpoints and start from step 0")
    args = parser.parse_args(argv)
    cfg = resolve_config(args)
    ws = workspace(args)
    if args.restart:
        shutil.rmtree(ws.checkpoint_dir(STAGE), ignore_errors=True)
    with ProgressReporter() as progress:
        out = pretrain(ws, cfg, progress=progress)
    if int(os.environ.get("RANK", "0")) != 0:       # under torchrun / accelerate launch: report once
        return 130 if out.get("reason") == "interrupted" else 0
    if out.get("stopped"):
        print(f"{out['reason']} at step {out['step']}; checkpoint saved; rerun the same command to resume")
        return 130 if out["reason"] == "interrupted" else 0
    print(f"pre-trained {out['step']} steps; UNet in {ws.unet_dir}, scheduler in {ws.scheduler_dir}")
    if out["skipped_images"]:
        print(f"skipped {len(out['skipped_images'])} unreadable images: {list(out['skipped_images'])[:5]}")
    return 0
