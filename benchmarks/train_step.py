"""Training steps eager vs torch.compile'd (`<section>.compile`, issue 15), side by side in one run.

For each trainer's step at the preset's shapes (autoencoder, UNet pre-training, latent
classifier, downstream classifier): images/s eager and compiled, the compiled step's first call
(compiling its forward + backward, what every run pays once), the steps a run needs before the
compile time is paid back, and what compiling gains or costs over one run of the preset's length.
The compiled variant is what the trainers run with `compile` on: Trainer.compiled around the same
forward, eager fallback included. The UNet row adds its achieved FLOP/s as a fraction of a
matmul peak measured in the same run. Random data in memory: loading and augmentation are the
same work in both variants and left out.

    python -m benchmarks.train_step [--preset demo] [--steps 3] [--only pretrain,downstream]
"""
from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution  # noqa: E402
from diffusers.training_utils import EMAModel  # noqa: E402

from benchmarks.common import device_name, load_note, markdown_table, matmul_peak, time_steps  # noqa: E402
from benchmarks.profiling import profile_step  # noqa: E402
from benchmarks.pretrain_step import unet_step_flops  # noqa: E402
from core.train import pretrain as pt  # noqa: E402
from core.models import build_autoencoder, build_backbone, build_classifier  # noqa: E402
from core.config.presets import preset  # noqa: E402
from diffusers.models.attention_processor import Attention  # noqa: E402

from core.models.compile import CompiledOrEager, ShortSequenceAttnProcessor  # noqa: E402
from core.train.trainer import Trainer, TrainSpec, adamw  # noqa: E402

CLASSES = [f"c{i}" for i in range(8)]


def _trainer(section, compile_: bool) -> Trainer:
    return Trainer(TrainSpec(stage="bench", steps=10, seed=0, precision=section.mixed_precision,
                             batch_size=section.batch_size, compile=compile_))


def autoencoder_step(cfg, compile_: bool):
    """core.train.autoencoder's step: encode -> seeded latent draw -> decode -> L1 + KL -> AdamW."""
    a = cfg.autoencoder
    trainer = _trainer(a, compile_)
    acc, s = trainer.acc, cfg.data.image_size
    torch.manual_seed(0)
    vae = build_autoencoder(a).to(memory_format=torch.channels_last)
    vae, opt = trainer.prepare(vae, adamw(vae.parameters(), a.lr, 0.0, acc.device))

    def encode_moments(x):
        return vae.encode(x).latent_dist.parameters

    def decode_sample(z):
        return vae.decode(z).sample
    moments, reconstruct = trainer.compiled(encode_moments), trainer.compiled(decode_sample)
    x = (torch.rand(a.batch_size, 3, s, s) * 2 - 1).contiguous(memory_format=torch.channels_last)
    g = torch.Generator().manual_seed(0)

    def step():
        vae.train()
        with acc.autocast():
            post = DiagonalGaussianDistribution(moments(x))
            rec = reconstruct(post.sample(generator=g))
            loss = ((rec.float() - x).abs().flatten(1).sum(1) + a.kl_weight * post.kl().float()).mean() / x[0].numel()
        opt.zero_grad(set_to_none=True)
        acc.backward(loss)
        opt.step()
    return step, [moments, reconstruct], a.batch_size


def pretrain_step(cfg, compile_: bool, channels_last: bool | None = None, options: dict | None = None,
                  attention: str = "sdpa"):
    """core.train.pretrain.make_step_fn itself (cached latents, EMA, fused AdamW, grad clipping).
    The levers (`--levers`): channels_last (None: the trainer's rule, prefers_channels_last),
    inductor `options` (e.g. max_autotune), the attention processor ("sdpa": diffusers'
    AttnProcessor2_0, the default; "short": the CPU copy sampling compiles, core.models.compile)."""
    p = cfg.pretrain
    trainer = _trainer(p, compile_)
    acc, c, n = trainer.acc, cfg.autoencoder.latent_channels, cfg.latent_size
    torch.manual_seed(0)
    unet = pt.build_unet(p, n, c)
    if attention == "short":
        for layer in unet.modules():
            if isinstance(layer, Attention):
                layer.set_processor(ShortSequenceAttnProcessor())
    if channels_last is None:
        channels_last = pt.prefers_channels_last(acc.device, acc.mixed_precision)
    if channels_last:
        unet = unet.to(memory_format=torch.channels_last)
    ema = EMAModel(unet.parameters(), decay=p.ema_decay, foreach=True)
    unet, opt = trainer.prepare(unet, adamw(unet.parameters(), p.lr, p.weight_decay, acc.device))
    ema.to(acc.device)
    latents = np.random.default_rng(0).standard_normal((256, c, n, n)).astype(np.float32)
    forward = CompiledOrEager(unet, options=options, training=True) if compile_ and options else \
        trainer.compiled(unet)
    fn = pt.make_step_fn(acc, unet, pt.build_scheduler(p), opt, ema, latents, np.full(256, 1 / 256), p,
                         channels_last, forward)
    counter = iter(range(10 ** 9))
    return (lambda: fn(next(counter))), [forward], p.batch_size * p.grad_accum


def latent_classifier_step(cfg, compile_: bool):
    """core.train.latent_classifier's step: noised latents at random t -> LatentClassifier -> CE -> AdamW."""
    c = cfg.latent_classifier
    trainer = _trainer(c, compile_)
    acc, ch, n = trainer.acc, cfg.autoencoder.latent_channels, cfg.latent_size
    torch.manual_seed(0)
    model = build_classifier(cfg, CLASSES, ch, cfg.pretrain.num_train_timesteps)
    model, opt = trainer.prepare(model, adamw(model.parameters(), c.lr, c.weight_decay, acc.device))
    forward = trainer.compiled(model)
    z, y = torch.randn(c.batch_size, ch, n, n), torch.randint(0, len(CLASSES), (c.batch_size,))

    def step():
        model.train()
        t = torch.randint(0, cfg.pretrain.num_train_timesteps, (c.batch_size,))
        with acc.autocast():
            logits = forward(z, t)
        acc.backward(F.cross_entropy(logits.float(), y))
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step, [forward], c.batch_size


def downstream_step(cfg, compile_: bool):
    """core.train.image_classifier.train_image_classifier's step (the filter and every grid run): timm backbone -> CE."""
    c = cfg.downstream
    trainer = _trainer(c, compile_)
    acc = trainer.acc
    torch.manual_seed(0)
    model = build_backbone(c.backbone, len(CLASSES), c.pretrained_path).to(memory_format=torch.channels_last)
    model, opt = trainer.prepare(model, torch.optim.AdamW(model.parameters(), lr=c.lr, weight_decay=c.weight_decay))
    forward = trainer.compiled(model)
    x = (torch.rand(c.batch_size, 3, c.image_size, c.image_size) * 2 - 1).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, len(CLASSES), (c.batch_size,))

    def step():
        model.train()
        with acc.autocast():
            loss = F.cross_entropy(forward(x).float(), y, label_smoothing=c.label_smoothing)
        opt.zero_grad(set_to_none=True)
        acc.backward(loss)
        opt.step()
    return step, [forward], c.batch_size


STEPS = {"autoencoder": autoencoder_step, "pretrain": pretrain_step, "latent_classifier": latent_classifier_step,
         "downstream": downstream_step}


def run_length(cfg, name: str) -> int:
    """Optimizer steps of one run of this trainer at the preset (a grid run, for classify)."""
    return {"autoencoder": cfg.autoencoder.steps, "pretrain": cfg.pretrain.steps,
            "latent_classifier": cfg.latent_classifier.steps, "downstream": cfg.downstream.steps}[name]


def lever_variants(cfg, device) -> dict[str, tuple]:
    """The UNet step's levers, each ONE change from the trainer's compiled step as configured."""
    default_cl = pt.prefers_channels_last(device, _trainer(cfg.pretrain, False).acc.mixed_precision)
    twice = replace(cfg, pretrain=replace(cfg.pretrain, batch_size=2 * cfg.pretrain.batch_size))
    return {"compiled, as the trainer runs it": (cfg, True, {}),
            "eager": (cfg, False, {}),
            "NCHW" if default_cl else "channels_last": (cfg, True, {"channels_last": not default_cl}),
            "max-autotune (inductor)": (cfg, True, {"options": {"max_autotune": True}}),
            "attention bmm + softmax (not SDPA)": (cfg, True, {"attention": "short"}),
            f"batch {2 * cfg.pretrain.batch_size}": (twice, True, {})}


def levers(cfg, device, rounds: int) -> list[dict]:
    """Images/s and share of the bf16 matmul peak per lever, rounds interleaved (shared machine)."""
    variants = {name: pretrain_step(c, comp, **kw) for name, (c, comp, kw) in lever_variants(cfg, device).items()}
    first = {}
    for name, (fn, _, _) in variants.items():
        t = time.perf_counter()
        fn()                                                       # compiles forward + backward
        first[name] = time.perf_counter() - t
        fn()
    flops_per_image = unet_step_flops(cfg, device) / cfg.pretrain.batch_size
    times, cpu, peaks = {name: [] for name in variants}, {name: [] for name in variants}, []
    for _ in range(rounds):
        peaks.append(matmul_peak(torch.bfloat16, 8192 if device.type == "cuda" else 2048, 2, device))
        for name, (fn, _, _) in variants.items():
            c = time.process_time()
            times[name].append(time_steps(fn, 1, warmup=0, device=device))
            cpu[name].append(time.process_time() - c)
    peak = max(peaks)
    rate = {name: variants[name][2] / float(np.median(times[name])) for name in variants}   # images/s
    rows = []
    for name, (_, wrappers, batch) in variants.items():
        # process CPU seconds beside the wall: on a loaded machine wall/CPU > 1 is time spent waiting
        rows.append({"UNet step": name, "batch": batch, "img/s": rate[name],
                     "vs compiled": rate[name] / rate["compiled, as the trainer runs it"],
                     "% of bf16 peak": 100 * flops_per_image * rate[name] / peak,
                     "wall s/step": float(np.median(times[name])), "CPU s/step": float(np.median(cpu[name])),
                     "first call s": first[name],
                     "fell back": "; ".join(w.failed for w in wrappers if getattr(w, "failed", None)) or "no"})
    print(f"{load_note()} at the end of the timed rounds")
    print(f"bf16 matmul 2048^3 peak (best of {rounds} in this run): {peak / 1e9:.0f} GFLOP/s; "
          f"UNet fwd+bwd {flops_per_image * cfg.pretrain.batch_size / 1e9:.1f} GFLOP per step of "
          f"{cfg.pretrain.batch_size}")
    return rows


def print_profile(cfg, device, calls: int, kernel_names: bool = False) -> None:
    """The UNet step's profile, eager and compiled: phases, kinds of operators, the top operators.
    `kernel_names` profiles inductor's fused C++ kernels one by one; it changes inductor's config,
    so nothing compiled before is reused (on 2 loaded cores the tiny preset's compile did not end
    in 14 minutes with it, against 23-107 s without)."""
    if kernel_names:
        import torch._inductor.config as inductor_config
        inductor_config.cpp.enable_kernel_profile = True
    for compile_ in (False, True):
        fn, _, batch = pretrain_step(cfg, compile_)
        fn(), fn()                                         # compile, warm up
        prof = profile_step(fn, calls, device)
        label = "compiled" if compile_ else "eager"
        print(f"\n### UNet step, {label}: {prof['wall_ms']:.0f} ms wall, {prof['cpu_ms']:.0f} ms process CPU "
              f"per step of {batch} (profiled, {calls} steps; operator {prof['time']} self time "
              f"{prof['op_ms']:.0f} ms; {load_note()})\n")
        print(markdown_table(prof["phases"]))
        print()
        print(markdown_table(prof["kinds"]))
        print()
        print(markdown_table(prof["top"][:12]))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--steps", type=int, default=3, help="timed rounds (median) after the first call")
    parser.add_argument("--only", default=",".join(STEPS), help="comma-separated trainers")
    parser.add_argument("--profile", type=int, default=0, metavar="STEPS",
                        help="profile STEPS UNet steps (eager and compiled) and print where the time goes")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the table (and MFU) as JSON here")
    parser.add_argument("--kernel-names", action="store_true",
                        help="with --profile: name inductor's fused kernels (recompiles everything)")
    parser.add_argument("--levers", action="store_true",
                        help="the UNet step's levers side by side (each one change from the compiled step)")
    args = parser.parse_args(argv)
    cfg = preset(args.preset)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.profile or args.levers:
        print(f"{args.preset} preset shapes; {device_name(device)}; torch {torch.__version__}")
        if args.levers:
            print(markdown_table(levers(cfg, device, args.steps)))
        if args.profile:
            print_profile(cfg, device, args.profile, args.kernel_names)
        return
    rows, flops_row = [], None
    for name in args.only.split(","):
        eager, _, batch = STEPS[name](cfg, False)
        compiled, wrappers, _ = STEPS[name](cfg, True)
        eager()                                                   # warm-up (allocator, first kernels)
        t = time.perf_counter()
        compiled()                                                # compiles forward + backward
        first = time.perf_counter() - t
        # round-robin: the machine is shared, so both variants see the same disturbances
        times = {"eager": [], "compiled": []}
        for _ in range(args.steps):
            times["eager"].append(time_steps(eager, 1, warmup=0, device=device))
            times["compiled"].append(time_steps(compiled, 1, warmup=0, device=device))
        sec = {k: float(np.median(v)) for k, v in times.items()}
        compile_s = max(first - sec["compiled"], 0.0)
        saved = sec["eager"] - sec["compiled"]
        steps = run_length(cfg, name)
        failed = [w.failed for w in wrappers if w.failed]
        rows.append({"trainer": name, "batch": batch, "eager img/s": batch / sec["eager"],
                     "compiled img/s": batch / sec["compiled"], "speed-up": sec["eager"] / sec["compiled"],
                     "compile s (first call)": compile_s,
                     "break-even steps": f"{compile_s / saved:.0f}" if saved > 0 else "never",
                     f"net s over a {args.preset} run": steps * saved - compile_s, "run steps": steps,
                     "fell back": "; ".join(failed) or "no"})
        if name == "pretrain":
            flops_row = (unet_step_flops(cfg, device), sec)
        print(markdown_table(rows[-1:]), flush=True)              # each row as it is measured
    print(f"\n{args.preset} preset shapes; {device_name(device)}; torch {torch.__version__}\n")
    print(markdown_table(rows))
    if flops_row is not None:
        flops, sec = flops_row
        precision = _trainer(cfg.pretrain, False).acc.mixed_precision
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        peak = matmul_peak(dtype, 8192 if device.type == "cuda" else 2048, 3, device)
        print(f"\nUNet fwd+bwd {flops / 1e9:.1f} GFLOP per step; {'bf16' if precision == 'bf16' else 'fp32'} matmul peak "
              f"{peak / 1e9:.0f} GFLOP/s; eager {flops / sec['eager'] / peak:.1%} of it, "
              f"compiled {flops / sec['compiled'] / peak:.1%}")
        mfu = {"unet_gflop_per_step": flops / 1e9, "matmul_peak_gflops": peak / 1e9,
               "eager_share_of_peak": flops / sec["eager"] / peak,
               "compiled_share_of_peak": flops / sec["compiled"] / peak}
    if args.json:
        Path(args.json).write_text(json.dumps({"device": device_name(device), "preset": args.preset, "rows": rows,
                                               **({"mfu": mfu} if flops_row is not None else {})}, indent=1))


if __name__ == "__main__":
    main()
