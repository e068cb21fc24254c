"""Which images each optimizer step of an image classifier takes: the batch plan.

`compute="steps"` (the grid's default): every step takes the next real batch of a stream that
depends on the seed and the real set only, then the next `added_batch` images of the run's added
set (synthetic or pseudo-labelled), `added_batch = round(real_batch * n_added / n_real)`, so an
arm adds images at its realised ratio and every arm of a seed trains on exactly its baseline's
real batches (same images, same order, same size) for the same number of steps.

`compute="epochs"` (the reference's protocol): real and added images are one pool, shuffled
together; every arm trains `epochs` passes over its own pool, so adding images adds steps. An
epoch is at least MIN_STEPS_PER_EPOCH steps: on a set smaller than that many batches the batch
shrinks (a 48-image set at batch 64 once made one step per epoch).
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

import numpy as np
import torch

MIN_STEPS_PER_EPOCH = 4
ADDED_STREAM = 1_000_003        # the added images' stream: another generator than the real one's


class Stream:
    """Endless shuffled passes over n items, `size` per draw; a draw that crosses the end of a
    pass continues into the next, so every item is drawn equally often (within one)."""

    def __init__(self, n: int, size: int, generator: torch.Generator):
        self.n, self.size, self.gen = n, size, generator
        self.order, self.cursor = torch.randperm(n, generator=generator), 0

    def next(self) -> torch.Tensor:
        parts, want = [], self.size
        while want:
            if self.cursor == self.n:
                self.order, self.cursor = torch.randperm(self.n, generator=self.gen), 0
            take = self.order[self.cursor:self.cursor + want]
            parts.append(take)
            self.cursor += len(take)
            want -= len(take)
        return torch.cat(parts)


@dataclass
class BatchPlan:
    """The steps, batch sizes and streams of one run; `next()` gives (real, added) indices and
    counts every draw (views per image, the added share, a fingerprint of the real sequence)."""
    compute: str
    steps: int
    n_real: int
    n_added: int
    real_batch: int          # "epochs": the pool's whole batch, real and added mixed
    added_batch: int
    seed: int
    real_views: np.ndarray = field(init=False)
    added_seen: int = field(default=0, init=False)

    def __post_init__(self):
        self.real_views = np.zeros(self.n_real, dtype=np.int64)
        self._digest = hashlib.sha256()
        if self.compute == "epochs":
            self._pool = Stream(self.n_real + self.n_added, self.real_batch, torch.Generator().manual_seed(self.seed))
        else:
            self._real = Stream(self.n_real, self.real_batch, torch.Generator().manual_seed(self.seed))
            self._added = Stream(self.n_added, self.added_batch,
                                 torch.Generator().manual_seed(self.seed + ADDED_STREAM)) if self.added_batch else None

    @property
    def batch_size(self) -> int:
        return self.real_batch + self.added_batch

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(indices into the real set, indices into the added set) of the next step."""
        if self.compute == "epochs":
            drawn = self._pool.next()
            real, added = drawn[drawn < self.n_real], drawn[drawn >= self.n_real] - self.n_real
        else:
            real = self._real.next()
            added = self._added.next() if self._added is not None else torch.zeros(0, dtype=torch.long)
        np.add.at(self.real_views, real.numpy(), 1)
        self.added_seen += len(added)
        self._digest.update(real.numpy().astype(np.int64).tobytes())
        return real, added

    def record(self, params: torch.Tensor) -> None:
        """Fold what the real images' augmentation drew into the real sequence's fingerprint."""
        self._digest.update(params.double().numpy().tobytes())

    def report(self) -> dict:
        """Per run: real views per image (mean, min, max), the share of all images seen that
        were added ones, the batch sizes, and the real sequence's fingerprint."""
        seen = int(self.real_views.sum()) + self.added_seen
        return {"real_views_per_image": float(self.real_views.mean()), "real_views_min": int(self.real_views.min()),
                "real_views_max": int(self.real_views.max()), "added_share": self.added_seen / seen if seen else 0.0,
                "real_batch": self.real_batch if self.compute == "steps" else None,
                "added_batch": self.added_batch if self.compute == "steps" else None,
                "real_sequence": self._digest.hexdigest()[:16]}


def plan_batches(n_real: int, n_added: int, compute: str, steps: int, epochs: int, batch_size: int,
                 seed: int) -> BatchPlan:
    """The batch plan of a run with `n_real` real and `n_added` added training images."""
    if compute == "epochs":
        n = n_real + n_added
        batch = max(2, min(batch_size, math.ceil(n / MIN_STEPS_PER_EPOCH)))
        return BatchPlan("epochs", math.ceil(epochs * n / batch), n_real, n_added, batch, 0, seed)
    real = min(batch_size, n_real)
    # at least 2: BatchNorm of a one-image part has no statistics (the stream repeats a lone image)
    added = max(2, round(real * n_added / n_real)) if n_added else 0
    return BatchPlan("steps", steps, n_real, n_added, real, added, seed)
