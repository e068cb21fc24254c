"""Fault injection on a real trainer (pre-training, tiny preset): `kill -9` at random points,
a corrupt latest checkpoint, a full disk and a read-only workspace at random writes. Each must
leave a resumable workspace that lost nothing already saved, with at most one line of error.

Marked `faults` and `slow` (the kills start a fresh interpreter each, ~10 s apiece on 2 shared
cores): `python -m pytest -m faults -s` prints the tally of kill points and faults survived.
"""
from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from core.train import pretrain as pt
from core.commands import pretrain as pt_cmd
from core.train import trainer as training
from core.io import read_jsonl
from ldm_fixtures import message_lines

pytestmark = [pytest.mark.faults, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[3]
STEPS, EVERY = 120, 20
SETS = [f"pretrain.steps={STEPS}", f"pretrain.checkpoint_every={EVERY}", "pretrain.sample_every=50",
        "pretrain.log_every=1", "pretrain.mixed_precision=no", "pretrain.checkpoints_total_limit=3"]
TALLY: dict[str, list[int]] = {}           # fault kind -> [tried, survived]
LAST_KILL: dict[int, int] = {}             # kill point -> newest checkpoint left behind


def _count(kind: str, survived: bool, detail: str = "") -> None:
    tried_ok = TALLY.setdefault(kind, [0, 0])
    tried_ok[0] += 1
    tried_ok[1] += int(survived)
    print(f"\nfault: {kind} {detail}: {'survived' if survived else 'LOST'}", flush=True)


@pytest.fixture(scope="module")
def trained_ws(trained_autoencoder, tmp_path_factory):
    import shutil

    from core.workspace import Workspace
    ws = Workspace(shutil.copytree(trained_autoencoder.root, tmp_path_factory.mktemp("faults") / "ws"))
    yield ws
    print("\nfault tally (tried / survived): " +
          ", ".join(f"{k} {v[1]}/{v[0]}" for k, v in TALLY.items()))


def _args(ws, *extra):
    out = ["--workspace", str(ws.root), "--preset", "tiny"]
    for s in (*SETS, *extra):
        out += ["--set", s]
    return out


def _readable_checkpoints(folder: Path) -> list[int]:
    steps = [s for s, _ in training.list_checkpoints(folder)]
    assert all(training._unreadable(p) is None for _, p in training.list_checkpoints(folder))
    return steps


@pytest.fixture(scope="module")
def kills(trained_ws):
    """Four `core pretrain` processes killed with SIGKILL, each resuming what the previous left:
    three at a random step past the checkpoint it resumed from (so there is saved work to lose),
    the last as soon as a checkpoint is being written (temp folder). Per kill point: survived
    (killed, no checkpoint lost, the next run resumed one past the newest) and what it saw."""
    ws, folder = trained_ws, trained_ws.checkpoints_dir / "pretrain"
    rng = np.random.default_rng(14)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    outcomes = []
    for point in range(4):
        seen = len(read_jsonl(ws.metrics_file("pretrain")))
        proc = subprocess.Popen([sys.executable, "-m", "core", "pretrain", *_args(ws)], cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        start = LAST_KILL.get(point - 1, 0)
        target = start + int(rng.integers(EVERY // 2, 2 * EVERY + 5))
        deadline = time.time() + 600

        def logged() -> int:
            rows = read_jsonl(ws.metrics_file("pretrain"))
            return rows[-1]["step"] if len(rows) > seen else 0
        if point == 3:
            while time.time() < deadline and not list(folder.glob(".checkpoint-*.tmp")):
                time.sleep(0.001)
        else:
            while time.time() < deadline and logged() < target and proc.poll() is None:
                time.sleep(0.005)
        before = training.latest_checkpoint(folder)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        after = _readable_checkpoints(folder)
        survived = proc.returncode == -signal.SIGKILL and (before is None or after[-1] >= before[0])
        rows = read_jsonl(ws.metrics_file("pretrain"))
        resumed_at = rows[seen]["step"] if len(rows) > seen else None
        expected_start = LAST_KILL.get(point - 1, 0) + 1     # one past the checkpoint it resumed
        survived = survived and resumed_at == expected_start
        _count("kill -9 (random)" if point < 3 else "kill -9 (mid-checkpoint)", survived,
               f"#{point}: killed at step {logged()}, newest checkpoint "
               f"{before and before[0]} -> {after[-1] if after else None}")
        outcomes.append({"survived": survived, "seen": (point, before, after, resumed_at, expected_start)})
        LAST_KILL[point] = after[-1] if after else 0
    return outcomes


@pytest.fixture(scope="module")
def after_kills(kills, trained_ws):
    """The same command once more, not killed: (its completed process, the workspace)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "core", "pretrain", *_args(trained_ws)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    return out, trained_ws


@pytest.mark.parametrize("point", range(4))
def test_kill_minus_9_at_random_points_then_resume(kills, point):
    assert kills[point]["survived"], kills[point]["seen"]


def test_a_run_after_the_kills_finishes(after_kills):
    out, ws = after_kills
    assert out.returncode == 0, out.stderr
    rows = read_jsonl(ws.metrics_file("pretrain"))
    assert rows[-1]["step"] == STEPS and ws.unet_dir.is_dir()
    _count("resume after the kills", True)


def test_corrupt_latest_checkpoint_resumes_from_the_previous(after_kills, capsys):
    """In the workspace the kills and the finished run left (its newest checkpoints)."""
    ws = after_kills[1]
    folder = ws.checkpoints_dir / "pretrain"
    steps = _readable_checkpoints(folder)
    latest = folder / f"checkpoint-{steps[-1]}"
    with open(latest / "model.safetensors", "r+b") as f:
        f.truncate(1000)
    assert pt_cmd.cli(_args(ws, f"pretrain.steps={STEPS + EVERY}")) == 0
    err = message_lines(capsys.readouterr().err)
    survived = (len(err) == 1 and latest.name in err[0] and (folder / f"{latest.name}.corrupt").is_dir()
                and read_jsonl(ws.metrics_file("pretrain"))[-1]["step"] == STEPS + EVERY)
    _count("corrupt latest checkpoint", survived)
    assert survived, err


ENOSPC = 'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'


def _fail_at(calls: int, exc: BaseException, real):
    count = {"n": 0}

    def wrapper(*a, **k):
        count["n"] += 1
        if count["n"] == calls:
            raise exc
        return real(*a, **k)
    return wrapper


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("fault", ["full disk at a checkpoint", "read-only metrics log",
                                   "full disk at a sample grid"])
def test_full_disk_and_read_only_at_random_writes(trained_ws, tmp_path, monkeypatch, capsys, fault, seed):
    import shutil

    from safetensors import SafetensorError

    from core.workspace import Workspace
    ws = Workspace(shutil.copytree(trained_ws.root, tmp_path / "ws"))
    folder = ws.checkpoints_dir / "pretrain"
    shutil.rmtree(folder, ignore_errors=True)
    ws.metrics_file("pretrain").unlink(missing_ok=True)
    shutil.rmtree(ws.unet_dir, ignore_errors=True)
    args = _args(ws, "pretrain.steps=40", "pretrain.checkpoint_every=4", "pretrain.sample_every=8")
    rng = np.random.default_rng([seed, len(fault)])
    if fault == "full disk at a checkpoint":
        at = int(rng.integers(1, 10))
        monkeypatch.setattr(training.Accelerator, "save_state",
                            _fail_at(at, SafetensorError(ENOSPC), training.Accelerator.save_state))
    elif fault == "read-only metrics log":
        at = int(rng.integers(1, 40))
        monkeypatch.setattr(training, "append_jsonl", _fail_at(
            at, OSError(errno.EROFS, "Read-only file system", str(ws.metrics_file("pretrain"))),
            training.append_jsonl))
    else:
        at = int(rng.integers(1, 5))
        monkeypatch.setattr(pt, "save_png", _fail_at(
            at, OSError(errno.ENOSPC, "No space left on device"), pt.save_png))
    before_fault = capsys.readouterr()
    rc = pt_cmd.cli(args)
    err = message_lines(capsys.readouterr().err)
    saved = _readable_checkpoints(folder)
    monkeypatch.undo()
    rc2 = pt_cmd.cli(args)
    survived = (rc == 1 and len(err) == 1 and "cannot write" in err[0] and rc2 == 0
                and read_jsonl(ws.metrics_file("pretrain"))[-1]["step"] == 40)
    _count(fault, survived, f"at write #{at}")
    assert survived, (fault, at, rc, err, saved, rc2, before_fault)
