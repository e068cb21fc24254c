"""Building the bundled demo data (`python -m core data demo`, and the first `make run`): seconds
for a first build and for the rebuild that finds it done, per preset, side by side in one run
(each preset's build as a multiple of the first preset's).

python -m benchmarks.demo_data [--presets tiny demo] [--repeats 3]

Not a timed test: the tests check what the build writes and that a rebuild is skipped; this
reports how long each takes on this machine (median of `repeats` fresh workspaces).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import markdown_table  # noqa: E402


def build_times(preset_name: str, repeats: int) -> dict:
    from core.config.presets import preset
    from core.data.demo import build_demo
    from core.workspace import Workspace
    cfg = preset(preset_name)
    first, again, tiles = [], [], 0
    for _ in range(repeats):
        with tempfile.TemporaryDirectory(prefix="demo-data-") as tmp:
            ws = Workspace(Path(tmp) / "ws")
            t0 = time.perf_counter()
            out = build_demo(ws, cfg)
            first.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            assert build_demo(ws, cfg)["skipped"]
            again.append(time.perf_counter() - t0)
            tiles = sum(sum(c.values()) for c in out["counts"].values()) + sum(out["pools"].values())
    build, skip = statistics.median(first), statistics.median(again)
    return {"preset": preset_name, "image px": cfg.data.image_size, "tiles written": tiles,
            "first build s": build, "rebuild (skipped) ms": skip * 1e3}


def main(argv: list[str] | None = None) -> int:
    import torch
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--presets", nargs="+", default=["tiny", "demo"])
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    rows = [build_times(name, args.repeats) for name in args.presets]
    for row in rows:        # side by side with the first preset's build, timed in the same run
        row[f"x {rows[0]['preset']} build"] = row["first build s"] / rows[0]["first build s"]
    print(f"CPU threads: {torch.get_num_threads()}; median of {args.repeats} fresh workspaces")
    print(markdown_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
