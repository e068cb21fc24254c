"""The measurements behind the grid's protocol (issue 25), on an installed demo workspace's
existing synthetic sets, through the grid's own training code (core.train.image_classifier):

- `speed`: seconds per optimizer step of the downstream classifier, fp32 vs bf16, eager vs
  compiled, baseline and augmented batches (two run lengths: their difference is the per-step
  time, the rest the run's fixed cost, compiling included);
- `curve`: the baseline's validation and test accuracy after 100 / 300 / 1000 steps per budget;
- `norm`: the BatchNorm options (core.train.normalization), each with its own baseline, against
  the selected-synthetic arm at one ratio;
- `jitter`: the baseline's validation accuracy per stain-jitter strength (--jitters);
- `views`: real views per image and the added share per budget, ratio and protocol, from the batch
  plan alone (core.train.batches, no training; --sizes gives the budgets' real training counts).

Rows carry wall seconds and the process's CPU seconds (time.process_time: with one thread, about
what the run takes on an idle core, whatever else the machine runs).

Every run appends a row to --out (CSV) and is skipped when its row is there (resumable).

    python -m benchmarks.fair_trial curve --workspace W --out curve.csv [--budgets 1,0.25,0.1]
        [--steps 100,300,1000] [--seeds 0,1] [--set downstream.stain_jitter=0.2 ...]
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from benchmarks.common import markdown_table  # noqa: E402
from core.config.checks import apply_overrides  # noqa: E402
from core.config.store import load_config  # noqa: E402
from core.data.budget import budget_labels, budget_views  # noqa: E402
from core.data.tables import load_splits  # noqa: E402
from core.protocol.arms import budget_pools, draw_arm  # noqa: E402
from core.train.batches import plan_batches  # noqa: E402
from core.train.image_classifier import metrics_on_test, train_image_classifier  # noqa: E402
from core.workspace import Workspace  # noqa: E402

BASELINE_NORM = {"pooled": "pooled", "split": "pooled", "recompute": "recompute",
                 "split_recompute": "recompute", "group": "group"}   # without added images split = pooled


class Bench:
    def __init__(self, args):
        self.ws = Workspace(args.workspace)
        self.cfg = apply_overrides(load_config(self.ws.config_file), args.set)
        self.cfg = replace(self.cfg, experiment=replace(self.cfg.experiment, arms=("selected",)))
        self.splits, self.classes = load_splits(self.ws)
        self.test = self.splits[self.splits.split == "test"]
        self.views = dict(budget_views(self.ws, self.cfg))
        self.out = Path(args.out)
        self.done = pd.read_csv(self.out) if self.out.exists() else pd.DataFrame()
        self._inputs = {}

    def inputs(self, budget: float):
        if budget not in self._inputs:
            bws = self.views[budget]
            labels = budget_labels(bws, self.cfg)[0]
            self._inputs[budget] = (labels, budget_pools(bws, self.cfg, labels, self.splits, self.classes))
        return self._inputs[budget]

    def run(self, key: dict, budget: float, seed: int, ratio: float = 0.0, **fields) -> dict:
        if len(self.done) and (self.done[list(key)].astype(str) == pd.Series(key).astype(str)).all(1).any():
            return {}
        labels, pools = self.inputs(budget)
        real, val = labels[labels.split == "train"], labels[labels.split == "val"]
        added = draw_arm("selected", pools, real, ratio, seed)[0] if ratio else None
        cfg = replace(self.cfg.downstream, **fields)
        t0, c0 = time.perf_counter(), time.process_time()
        model, history = train_image_classifier(real, val, self.classes, cfg, seed, extra_df=added)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        m = metrics_on_test(model, self.test, self.classes, cfg)
        last = history.iloc[-1]
        a = history.attrs
        row = {**key, "n_real": len(real), "n_added": a["n_added"], "steps": a["steps"],
               "batch": a["batch_size"], "seconds": round(seconds, 2), "cpu_seconds": round(cpu, 2), "best_step": a["best_step"],
               "model_selection": a["model_selection"], "final_train_loss": round(float(last["train_loss"]), 4),
               "final_val_accuracy": last["val_accuracy"], "final_val_balanced": last["val_balanced_accuracy"],
               "kept_val_balanced": a["best_val_balanced_accuracy"], "test_accuracy": m["accuracy"],
               "test_balanced": m["balanced_accuracy"], "real_views_per_image": a["real_views_per_image"],
               "added_share": a["added_share"], "real_sequence": a["real_sequence"],
               "val_curve": ";".join(f"{int(s)}:{v:.3f}" for s, v in zip(history["step"], history["val_accuracy"]))}
        self.done = pd.concat([self.done, pd.DataFrame([row])], ignore_index=True)
        self.done.to_csv(self.out, index=False)
        print({k: row[k] for k in (*key, "seconds", "cpu_seconds", "final_val_accuracy", "test_accuracy")}, flush=True)
        return row


def views_table(sizes: list[int], ratios: list[float], steps: list[int], epochs: int, batch: int) -> pd.DataFrame:
    """Per budget size and ratio: each protocol's batch and real views per image (min-max)."""
    rows = []
    for n in sizes:
        for ratio in ratios:
            added, row = round(ratio * n), {"n_real": n, "ratio": ratio}
            row["n_added"] = added
            for compute, count in [("steps", s) for s in steps] + [("epochs", epochs)]:
                plan = plan_batches(n, added, compute, count, epochs, batch, 0)
                for _ in range(plan.steps):
                    plan.next()
                r, name = plan.report(), f"{compute}={count}"
                row[f"{name}: steps, batch"] = f"{plan.steps}, {plan.batch_size}"
                row[f"{name}: real views (min-max)"] = (f"{r['real_views_per_image']:.1f} "
                                                       f"({r['real_views_min']}-{r['real_views_max']})")
                row[f"{name}: added share"] = round(r["added_share"], 2)
            rows.append(row)
    return pd.DataFrame(rows)


def floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=("speed", "curve", "norm", "jitter", "views"))
    p.add_argument("--sizes", default="480,120,48")
    p.add_argument("--ratios", default="0,0.5,1")
    p.add_argument("--jitters", default="0.05,0.2,0.4")
    p.add_argument("--workspace", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--budgets", default="1,0.25,0.1")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--steps", default="100,300,1000")
    p.add_argument("--norms", default="pooled,split,recompute,split_recompute,group")
    p.add_argument("--ratio", type=float, default=1.0)
    p.add_argument("--set", action="append", default=[])
    args = p.parse_args()
    if args.what == "views":
        steps = [int(s) for s in floats(args.steps)]
        table = views_table([int(s) for s in floats(args.sizes)], floats(args.ratios), steps, 15, 64)
        table.to_csv(args.out, index=False)
        print(markdown_table(table.to_dict("records")))
        return
    bench = Bench(args)
    budgets, seeds, steps = floats(args.budgets), [int(s) for s in floats(args.seeds)], [int(s) for s in floats(args.steps)]
    print(f"CPU threads {torch.get_num_threads()}; {bench.cfg.downstream}", flush=True)
    if args.what == "speed":
        for precision, compile_ in (("no", False), ("no", True), ("bf16", False)):
            for ratio in (0.0, args.ratio):
                for n in steps:
                    bench.run({"what": "speed", "precision": precision, "compile": compile_, "ratio": ratio,
                               "budget": budgets[0], "total": n}, budgets[0], 0, ratio, steps=n, evals=1,
                              mixed_precision=precision, compile=compile_)
    elif args.what == "curve":
        for seed in seeds:
            for budget in budgets:
                for n in steps:
                    bench.run({"what": "curve", "budget": budget, "total": n, "seed": seed}, budget, seed, steps=n)
    elif args.what == "jitter":
        for seed in seeds:
            for budget in budgets:
                for jitter in floats(args.jitters):
                    bench.run({"what": "jitter", "budget": budget, "stain_jitter": jitter, "total": steps[0],
                               "seed": seed}, budget, seed, steps=steps[0], stain_jitter=jitter)
    else:
        for seed in seeds:
            for budget in budgets:
                for norm in args.norms.split(","):
                    base = BASELINE_NORM[norm]
                    bench.run({"what": "norm", "budget": budget, "arm": "baseline", "norm": base, "seed": seed},
                              budget, seed, norm=base, steps=steps[0])
                    bench.run({"what": "norm", "budget": budget, "arm": "selected", "norm": norm, "seed": seed},
                              budget, seed, args.ratio, norm=norm, steps=steps[0])


if __name__ == "__main__":
    main()
