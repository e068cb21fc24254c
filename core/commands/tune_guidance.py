"""`python -m core tune-guidance`: sweep guidance scales per class and write each class's pick
into the workspace config (core.protocol.tune)."""
from __future__ import annotations

import argparse

from core.cli import ProgressReporter, add_common, guarded, resolve_config, workspace
from core.config.store import load_config
from core.errors import UserError
from core.protocol.tune import COPY_CEILING, GRID, NUM, tune_guidance


@guarded
def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m core tune-guidance",
                                     description="sweep guidance scales per class and keep each class's best")
    add_common(parser)
    parser.add_argument("--grid", default=",".join(f"{s:g}" for s in GRID), help="comma-separated scales")
    parser.add_argument("--num", type=int, default=NUM, help="images per class and scale")
    parser.add_argument("--copy-ceiling", type=float, default=COPY_CEILING,
                        help="largest copy rate a scale may have to be chosen")
    parser.add_argument("--features", default=None, help="feature space, as for `evaluate`")
    args = parser.parse_args(argv)
    try:
        grid = [float(s) for s in args.grid.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--grid must be comma-separated numbers, got {args.grid!r}") from None
    cfg, ws = resolve_config(args), workspace(args)

    with ProgressReporter() as progress:
        out = tune_guidance(ws, cfg, grid, args.num, args.features, args.copy_ceiling, progress=progress)
    cols = ["class", "guidance_scale", "n", "acceptance", "coverage", "floor_coverage", "fd", "floor_fd",
            "copy_rate", "objective", "chosen"]
    print(out["table"][cols].to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    print(f"objective: acceptance x coverage, copy rate <= max({args.copy_ceiling:g}, real-vs-real copy rate); "
          f"features: {out['table']['features'].iloc[0]}")
    for cls, scale in out["choices"].items():
        print(f"{cls}: guidance scale {scale:g}")
    saved = load_config(ws.config_file).sampling if ws.config_file.exists() else cfg.sampling
    for cls in out["no_eligible"]:
        print(f"{cls}: no scale had accepted images under the copy-rate ceiling; "
              f"samples at {saved.scale_for(cls):g}")
    print(f"wrote {ws.guidance_sweep_csv} and sampling.class_guidance_scales in {ws.config_file}")
    return 0
