"""How much colour alone tells after H&E augmentation, per stain-jitter strength (issue 25).

Two colour-only classifiers (multinomial logistic regression on each image's mean and standard
deviation of R, G, B: 6 numbers, no shape), trained and tested on augmented images:

(`--features mean`: the mean R, G, B only, 3 numbers: colour and nothing else)

- class: the 4 tissue classes from the real labeled images (train -> validation split);
- source: real vs synthetic images of the same class (accepted synthetic of the first budget),
  halves of each as train and test, balanced accuracy (0.5: colour does not tell them apart).

Each image is augmented `--draws` times (core.data.augment.he_augment). Reads an installed demo
workspace (`from core.protocol import install_demo`).

    python -m benchmarks.colour_cue --workspace /work/ws/d-demo [--strengths 0,0.05,0.1,0.2,0.3]
"""
from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from benchmarks.common import device_name, markdown_table  # noqa: E402
from core.config.store import load_config  # noqa: E402
from core.data.augment import he_augment  # noqa: E402
from core.evaluate.inference import load_images  # noqa: E402
from core.protocol.topup import accepted_images  # noqa: E402
from core.workspace import Workspace  # noqa: E402


def colour_features(x: torch.Tensor, spread: bool) -> torch.Tensor:
    """(N, 3, H, W) in [-1, 1] -> (N, 3) mean per channel, or (N, 6) with the std per channel
    (the std is partly texture: contrast and sharpness, not only colour)."""
    return torch.cat([x.mean((2, 3)), x.std((2, 3))], dim=1) if spread else x.mean((2, 3))


def augmented_features(images: torch.Tensor, strength: float, draws: int, seed: int, spread: bool) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.stack([colour_features(he_augment(images, gen, strength)[0], spread) for _ in range(draws)], 1)


def logistic(train_x, train_y, test_x, classes: int) -> np.ndarray:
    """Predicted classes of test_x from an L2-regularised multinomial logistic regression."""
    mu, sd = train_x.mean(0), train_x.std(0) + 1e-6
    a, b = (train_x - mu) / sd, (test_x - mu) / sd
    w = torch.zeros(a.shape[1], classes, requires_grad=True)
    bias = torch.zeros(classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, bias], max_iter=200, line_search_fn="strong_wolfe")
    y = torch.as_tensor(train_y, dtype=torch.long)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(a @ w + bias, y) + 1e-3 * (w ** 2).sum()
        loss.backward()
        return loss
    opt.step(closure)
    return (b @ w + bias).argmax(1).numpy()


def balanced(y_true, y_pred) -> float:
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    return float(np.mean([(y_pred[y_true == k] == k).mean() for k in np.unique(y_true)]))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--workspace", required=True)
    p.add_argument("--strengths", default="0,0.05,0.1,0.2,0.3")
    p.add_argument("--draws", type=int, default=4)
    p.add_argument("--features", choices=("mean", "mean_std"), default="mean_std")
    args = p.parse_args()
    ws = Workspace(args.workspace)
    cfg = load_config(ws.config_file)
    splits = pd.read_csv(ws.split_manifest)
    train, val = splits[splits.split == "train"], splits[splits.split == "val"]
    size = cfg.downstream.image_size
    x_train, _, _ = load_images(train["path"], size)
    x_val, _, _ = load_images(val["path"], size)
    synth = accepted_images(ws, cfg)
    x_syn, _, _ = load_images(synth["path"], size)
    rows, spread = [], args.features == "mean_std"
    for s in (float(v) for v in args.strengths.split(",")):
        f_tr, f_va = augmented_features(x_train, s, args.draws, 0, spread), augmented_features(x_val, s, args.draws, 1, spread)
        pred = logistic(f_tr.flatten(0, 1), np.repeat(train["label"].to_numpy(), args.draws),
                        f_va.flatten(0, 1), 4)
        class_acc = balanced(np.repeat(val["label"].to_numpy(), args.draws), pred)
        source = []
        for label in sorted(synth["label"].unique()):
            real = x_train[torch.as_tensor(train["label"].to_numpy() == label)]
            fake = x_syn[torch.as_tensor(synth["label"].to_numpy() == label)]
            k = min(len(real), len(fake))
            if k < 10:
                continue
            fr, ff = (augmented_features(real[:k], s, args.draws, 2, spread),
                      augmented_features(fake[:k], s, args.draws, 3, spread))
            h = k // 2
            tr_x = torch.cat([fr[:h], ff[:h]]).flatten(0, 1)
            te_x = torch.cat([fr[h:], ff[h:]]).flatten(0, 1)
            tr_y = np.repeat([0] * h + [1] * h, args.draws)
            te_y = np.repeat([0] * (k - h) + [1] * (k - h), args.draws)
            source.append((label, k, balanced(te_y, logistic(tr_x, tr_y, te_x, 2))))
        rows.append({"features": args.features, "stain jitter": s, "colour-only class bal. acc. (4 classes, chance 0.25)": round(class_acc, 3),
                     **{f"real vs synthetic, class {lab} (n={k})": round(acc, 3) for lab, k, acc in source}})
        print(markdown_table(rows[-1:]), flush=True)
    print(f"\n{device_name(torch.device('cpu'))}\n")
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
