"""`python -m core evaluate` on the bundled demo: 800 synthetic images (200 per class at s = 3)
against the demo's real set, with a cold feature cache and then a warm one.

python -m benchmarks.quality_eval [--workspace DIR] [--features SPEC]

Not a timed test: it reports where the time goes (embedding vs the metrics) on this machine.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import device_name, markdown_table

BUNDLE = Path(__file__).resolve().parents[1] / "assets" / "demo_models"


def run(ws, cfg, features) -> dict:
    from core.evaluate.quality import measure_quality
    embedded = []

    def progress(p: dict) -> None:
        if p["stage"] == "features":
            embedded.append(p["step"])
    t0 = time.perf_counter()
    out = measure_quality(ws, cfg, features=features, progress=progress)
    return {"images embedded": max(embedded, default=0), "evaluate s": time.perf_counter() - t0,
            "groups": len(out["rows"]), "synthetic images": sum(r["n"] for r in out["rows"] if r["set"] == "all")}


def main() -> None:
    from core.config.store import load_config
    from core.protocol.demo_models import install_demo
    from core.workspace import Workspace
    parser = argparse.ArgumentParser()
    parser.add_argument("--workspace", type=Path, default=None, help="default: a fresh copy of the demo bundle")
    parser.add_argument("--features", default=None)
    args = parser.parse_args()
    root = args.workspace or Path(tempfile.mkdtemp(prefix="quality-bench-")) / "ws"
    ws = Workspace(root)
    if not (ws.root / "config.json").exists():
        install_demo(BUNDLE, ws)
    cfg = load_config(ws.root / "config.json")
    for old in ws.cache_dir.glob("features-*.safetensors"):
        old.unlink()                                    # cold: nothing embedded yet
    rows = [{"cache": "cold", **run(ws, cfg, args.features)}, {"cache": "warm", **run(ws, cfg, args.features)}]
    print(f"{device_name(torch.device('cpu'))}, workspace {ws.root}")
    rows[0]["embedding s (cold - warm)"] = rows[0]["evaluate s"] - rows[1]["evaluate s"]
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
