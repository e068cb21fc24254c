"""Guided sampling images/s: this pipeline vs a loop written like the reference implementation.

Reference loop, as HistoDiffAug's sample_diffusion.py + ldm DDIMSampler do it: fp32, batch 10,
the UNet under no_grad, the classifier (weights left trainable, as there) differentiated w.r.t.
its input every step through `torch.enable_grad` + `autograd.grad`. The issue-4 reference also
keeps the UNet's graph. Ours: the pipeline with a bf16-autocast UNet (channels_last on CUDA only:
on CPU it made group norm ~7x slower), larger batches, a frozen fp32 classifier; then the same with
`configure(compile=True)` (inductor, the UNet's weights frozen into its graph). Same (random-init,
preset-shaped) models and seeds in every arm.

The machine is shared, so one run interleaves the arms round by round (every arm sees the same
load) and reports medians; achieved FLOP/s is set against a bf16 matmul peak measured in the run.

    python -m benchmarks.guided_sampling [--preset demo] [--num 128] [--rounds 3] [--threads 2] [--no-compile]
"""
from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch
from diffusers import DDIMScheduler

from benchmarks.common import count_flops, device_name, markdown_table, matmul_peak, sync
from core.models import build_autoencoder
from core.config.presets import preset
from core.models import build_classifier
from core.models import build_scheduler, build_unet, prefers_channels_last
from core.generate.pipeline import GuidedLatentPipeline


def reference_loop(unet, classifier, scheduler, ids, seeds, scale, steps, eta, batch=10, unet_graph=False):
    """The reference's sampler on diffusers' DDIM (guidance at the actual t, not t // 20).

    unet_graph=True is the loop as issue 4 words it ("UNet + classifier with autograd every
    step"): autograd stays on through the UNet forward, so its graph is built and kept."""
    ddim = DDIMScheduler.from_config(scheduler.config, clip_sample=False)
    ddim.set_timesteps(steps)
    c, s = unet.config.in_channels, unet.config.sample_size
    out = []
    for lo in range(0, len(seeds), batch):
        gens = [torch.Generator().manual_seed(k) for k in seeds[lo:lo + batch]]
        y = torch.tensor(ids[lo:lo + batch])
        z = torch.stack([torch.randn((c, s, s), generator=g) for g in gens])
        for t in ddim.timesteps:
            with torch.set_grad_enabled(unet_graph):           # DDIMSampler is @torch.no_grad
                eps = unet(z.requires_grad_(unet_graph), t).sample
            with torch.enable_grad():                          # its cond_fn
                x_in = z.detach().requires_grad_(True)
                log_probs = torch.log_softmax(classifier(x_in, t.expand(len(x_in))), -1)
                selected = log_probs[range(len(x_in)), y]
                grad = torch.autograd.grad(selected.sum(), x_in)[0]
            eps = eps - scale * (1 - ddim.alphas_cumprod[t]).sqrt() * grad
            z = ddim.step(eps, t, z, eta=eta, generator=gens).prev_sample.detach()
        out.append(z)
    return torch.cat(out)


def step_flops(unet, classifier, batch: int, guided: bool) -> int:
    """FLOPs of one denoising step on `batch` latents: UNet forward (+ classifier forward and its
    backward to the input). Weights are frozen while counting, so no weight-gradient FLOPs count
    (autograd.grad w.r.t. the input prunes them in every arm too)."""
    c, s = unet.config.in_channels, unet.config.sample_size
    z, t = torch.randn(batch, c, s, s), torch.tensor(500)
    flags = [p.requires_grad for p in classifier.parameters()]
    classifier.requires_grad_(False)

    def one_step():
        with torch.no_grad():
            unet(z, t)
        if guided:
            x = z.clone().requires_grad_(True)
            torch.log_softmax(classifier(x, t.expand(batch)), -1)[:, 0].sum().backward()
    try:
        return count_flops(one_step)
    finally:
        for p, f in zip(classifier.parameters(), flags):
            p.requires_grad_(f)


def build_models(cfg, device):
    torch.manual_seed(0)
    unet = build_unet(cfg.pretrain, cfg.latent_size, cfg.autoencoder.latent_channels).eval().to(device)
    clf = build_classifier(cfg, [f"c{i}" for i in range(9)], cfg.autoencoder.latent_channels,
                           cfg.pretrain.num_train_timesteps).eval().to(device)
    return unet, clf


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--num", type=int, default=128, help="images per arm and round")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=None, help="our batch size (default: sampling.batch_size)")
    ap.add_argument("--scale", type=float, default=10.0)
    ap.add_argument("--rounds", type=int, default=3, help="arms are interleaved this many times; medians")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile arms (~1 min compiling)")
    ap.add_argument("--classifier-widths", default=None,
                    help="override classifier.block_out_channels, e.g. 64,128,128 (the old demo classifier)")
    ap.add_argument("--classifier-pooling", choices=("attention", "mean"), default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = preset(args.preset)
    if args.classifier_widths:
        widths = tuple(int(w) for w in args.classifier_widths.split(","))
        cfg = replace(cfg, latent_classifier=replace(cfg.latent_classifier, block_out_channels=widths))
    if args.classifier_pooling:
        cfg = replace(cfg, latent_classifier=replace(cfg.latent_classifier, pooling=args.classifier_pooling))
    batch = args.batch or cfg.sampling.batch_size
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    unet, clf = build_models(cfg, device)
    vae = build_autoencoder(cfg.autoencoder).eval().to(device)
    seeds, ids = list(range(args.num)), [k % 9 for k in range(args.num)]
    peak = matmul_peak(torch.bfloat16, device=device)
    print(f"device: {device_name(device)}; bf16 matmul 2048^3 peak (this run): {peak / 1e9:.0f} GFLOP/s")
    print(f"preset {args.preset}: latents {cfg.autoencoder.latent_channels}x{cfg.latent_size}^2, UNet "
          f"{sum(p.numel() for p in unet.parameters()) / 1e6:.2f}M params, classifier "
          f"{tuple(cfg.latent_classifier.block_out_channels)} {cfg.latent_classifier.pooling}-pooled {sum(p.numel() for p in clf.parameters()) / 1e6:.2f}M "
          f"params; {args.num} images x {args.steps} DDIM steps per arm, {args.rounds} interleaved rounds")

    layout = torch.channels_last if prefers_channels_last(device, "bf16") else torch.contiguous_format
    pipe = GuidedLatentPipeline(unet=unet.to(memory_format=layout), vae=vae,
                                scheduler=build_scheduler(cfg.pretrain), latent_classifier=clf)
    pipe.set_progress_bar_config(disable=True)

    variants = {}      # one pipeline per setting: each compiles its modules once

    def ours(scale, compile=False, classifier_precision="no"):
        clf.requires_grad_(False)                                       # as from_pretrained does
        key = (compile, classifier_precision)
        if key not in variants:
            variants[key] = pipe.with_settings(mixed_precision="bf16", classifier_precision=classifier_precision,
                                               compile=compile)
        run = variants[key]
        return torch.cat([run(ids[lo:lo + batch], seeds=seeds[lo:lo + batch], guidance_scale=scale,
                               num_inference_steps=args.steps, eta=1.0, output_type="latent").images
                          for lo in range(0, len(seeds), batch)])

    def reference(unet_graph=False):
        clf.requires_grad_(True)                                             # as loaded there
        return reference_loop(unet, clf, pipe.scheduler, ids, seeds, args.scale, args.steps, 1.0,
                              unet_graph=unet_graph)

    # key: (label, fn, batch, guided)
    arms = {"ref": ("reference (fp32, batch 10, classifier autograd, UNet no_grad)", reference, 10, True),
            "ref4": ("issue-4 reference (fp32, batch 10, autograd through UNet + classifier)",
                     lambda: reference(unet_graph=True), 10, True),
            "guided": (f"ours: bf16 UNet, fp32 classifier, batch {batch}, guided",
                       lambda: ours(args.scale), batch, True),
            "unguided": (f"ours: bf16 UNet, batch {batch}, unguided (s=0)", lambda: ours(0.0), batch, False)}
    if not args.no_compile:
        arms["c_guided"] = (f"ours + compile: bf16 UNet, fp32 classifier, batch {batch}, guided",
                            lambda: ours(args.scale, compile=True), batch, True)
        arms["c_guided16"] = (f"ours + compile: bf16 UNet, bf16 classifier, batch {batch}, guided",
                              lambda: ours(args.scale, compile=True, classifier_precision="bf16"), batch, True)
        arms["c_unguided"] = (f"ours + compile: bf16 UNet, batch {batch}, unguided (s=0)",
                              lambda: ours(0.0, compile=True), batch, False)
    # warm-up: one step of every arm at its real batch shapes (oneDNN builds kernels per shape,
    # inductor compiles per shape)
    steps, args.steps = args.steps, 1
    for key, (label, fn, _, _) in arms.items():
        start = time.perf_counter()
        fn()
        if key.startswith("c_"):
            print(f"warm-up incl. compiling, {label}: {time.perf_counter() - start:.1f} s", flush=True)
    args.steps = steps
    times = {key: [] for key in arms}
    for _ in range(args.rounds):
        for key, (_, fn, _, _) in arms.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times[key].append(time.perf_counter() - start)

    med = {key: sorted(ts)[len(ts) // 2] for key, ts in times.items()}
    rows = []
    for key, (label, _, b, is_guided) in arms.items():
        flops = step_flops(unet, clf, b, is_guided) / b * args.num * args.steps
        rows.append({"loop": label, "median s": med[key], "min s": min(times[key]),
                     "images/s": args.num / med[key], "GFLOP/s": flops / med[key] / 1e9,
                     "% of bf16 peak": 100 * flops / med[key] / peak,
                     "vs reference": med["ref"] / med[key], "vs issue-4 reference": med["ref4"] / med[key]})
    print(markdown_table(rows))
    # Ratios within a round pair arms run back to back (similar load); their median is the
    # load-robust figure, the best-of-rounds ratio the least-disturbed one.
    def ratio(a, b):
        per_round = sorted(x / y for x, y in zip(times[a], times[b]))[len(times[a]) // 2]
        return f"{med[a] / med[b]:.2f}x of medians, {per_round:.2f}x median per round, " \
               f"{min(times[a]) / min(times[b]):.2f}x of bests"
    for ours_key, unguided_key in (("guided", "unguided"), ("c_guided", "c_unguided"), ("c_guided16", "c_unguided")):
        if ours_key not in arms:
            continue
        print(f"{arms[ours_key][0]}:")
        print(f"  speed-up vs reference: {ratio('ref', ours_key)}; vs issue-4 reference: {ratio('ref4', ours_key)} "
              "(target >= 3x)")
        print(f"  guided / unguided time: {ratio(ours_key, unguided_key)} (target <= 1.3x)")
    print("per-round seconds: " + "; ".join(f"{k}: {[round(x, 2) for x in times[k]]}" for k in arms))


if __name__ == "__main__":
    main()
