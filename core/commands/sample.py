"""`python -m core sample`: class-guided sampling (core.generate.sampling) into a label budget's synthetic
set, or one class into any folder."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from core.cli import ProgressReporter, guarded
from core.config.checks import apply_overrides, choices
from core.config.requests import request_count, request_seed, request_value
from core.commands import budget_parser, parse_budget
from core.generate.sampling import generate_images, generate_dataset


@guarded
def cli(argv: list[str]) -> int:
    parser = budget_parser("python -m core sample", "class-guided latent sampling")
    parser.add_argument("--class", dest="class_name", default=None,
                        help="class to generate (default: every class, sampling.num_per_class each)")
    parser.add_argument("--guidance-scale", type=float, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--eta", type=float, default=None)
    parser.add_argument("--sampler", "--scheduler", dest="sampler", choices=choices("sampling", "sampler"), default=None,
                        help="default: sampling.sampler")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--num", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: the budget's synthetic/, WORKSPACE/synthetic for the first)")
    parser.add_argument("--guidance-interval", metavar="LO,HI", default=None,
                        help="guide only timesteps LO..HI (= --set sampling.guidance_interval=LO,HI; "
                             "default: every timestep)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the models (= --set sampling.compile=true): 10-40 s to start, "
                             "then faster per image; for hundreds of images, not a handful")
    args, cfg, ws = parse_budget(parser, argv)
    _check_request(args)
    if args.compile:
        cfg = replace(cfg, sampling=replace(cfg.sampling, compile=True))
    if args.guidance_interval is not None:
        cfg = apply_overrides(cfg, [f"sampling.guidance_interval={args.guidance_interval}"])
    if args.class_name is None:
        with ProgressReporter() as progress:
            frame = generate_dataset(ws, cfg, progress=progress)
        print(f"{len(frame)} images in {ws.synthetic_dir}")
        return 0
    with ProgressReporter() as progress:
        rows = generate_images(ws, cfg, args.class_name, args.num or cfg.sampling.num_per_class,
                        cfg.sampling.seed if args.seed is None else args.seed, args.guidance_scale, args.steps,
                        args.eta, args.out, progress=progress, sampler=args.sampler)
    print(f"{len(rows)} images of {args.class_name} in {args.out or ws.synthetic_dir}")
    return 0


def _check_request(args) -> None:
    """The values given on the command line, checked as the app's requests are (NaN, inf, out of
    range: one line naming the flag) before a model loads. --num is not capped: a batch job may
    want thousands."""
    for flag, value, key in (("--guidance-scale", args.guidance_scale, "sampling.guidance_scale"),
                             ("--steps", args.steps, "sampling.steps"), ("--eta", args.eta, "sampling.eta")):
        if value is not None:
            request_value(flag, value, key)
    if args.seed is not None:
        request_seed("--seed", args.seed, random_allowed=False)
    if args.num is not None:
        request_count("--num", args.num, most=10 ** 9)
