"""Checkpoint folders on disk: the complete ones, newest first; temp folders a crash left; and
checkpoints that cannot be read, set aside as `*.corrupt` (core.train.trainer saves and resumes them)."""
from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

from accelerate import Accelerator

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


def list_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (step, path), oldest first; hidden temp folders are never listed."""
    if not folder.exists():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir()
             if p.is_dir() and (m := CHECKPOINT_RE.match(p.name))]
    return sorted(found)


def latest_checkpoint(folder: Path) -> tuple[int, Path] | None:
    found = list_checkpoints(folder)
    return found[-1] if found else None


def clean_partial_checkpoints(folder: Path) -> list[Path]:
    """Remove temp folders a crash left behind (they were never renamed, so never complete)."""
    removed = []
    if folder.exists():
        for p in folder.glob(".checkpoint-*.tmp"):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def _unreadable(path: Path) -> str | None:
    """Why a checkpoint cannot be loaded, from its safetensors headers (cheap: no tensor is read)."""
    from safetensors import safe_open
    for file in sorted(path.rglob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt") as f:
                f.keys()
        except Exception as e:  # noqa: BLE001 - SafetensorError, OSError: all mean unreadable
            return f"{file.relative_to(path)}: {type(e).__name__}: {e}"
    return None


def _quarantine(accelerator: Accelerator, path: Path, problem: str) -> None:
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        target = path.with_name(f"{path.name}.corrupt")
        if target.exists():
            shutil.rmtree(target)
        os.replace(path, target)
        print(f"warning: skipped {path} ({problem}); kept as {target.name}", file=sys.stderr, flush=True)
    accelerator.wait_for_everyone()
