"""The stage commands (core/commands/): `--budget NAME` picks the label budget's workspace view."""
from __future__ import annotations

import importlib

import pytest

from core.__main__ import STAGES, main

BUDGETS = ["--preset", "tiny", "--set", "experiment.label_fractions=1.0,0.25,20"]
# command -> the stage function its module calls first with the budget's workspace view
PER_BUDGET = {"latent-classifier": "train_latent_classifier", "sample": "generate_dataset",
              "select": "score_synthetic", "filter-classifier": "train_filter_classifier", "evaluate": "measure_quality"}


class Reached(Exception):
    """Raised by the stand-in stage function: the command got as far as the stage."""


@pytest.mark.parametrize("command", sorted(PER_BUDGET))
@pytest.mark.parametrize("budget, scope", [(None, ""), ("f1", ""), ("f0.25", "f0.25"), ("n20", "n20")])
def test_budget_picks_the_workspace_view(command, budget, scope, tmp_path, monkeypatch):
    module = importlib.import_module(STAGES[command])
    seen = []

    def stage(ws, *args, **kwargs):
        seen.append(ws)
        raise Reached
    monkeypatch.setattr(module, PER_BUDGET[command], stage)
    argv = ["--workspace", str(tmp_path), *BUDGETS] + (["--budget", budget] if budget else [])
    with pytest.raises(Reached):
        module.cli(argv + (["--rescore"] if command == "select" else []))
    ws = seen[0]
    assert ws.scope == scope
    assert ws.label_root == (tmp_path / "budgets" / scope if scope else tmp_path)


@pytest.mark.parametrize("command", sorted(PER_BUDGET))
def test_an_unknown_budget_names_the_configs_budgets(command, tmp_path, capsys):
    assert main([command, "--workspace", str(tmp_path), *BUDGETS, "--budget", "f0.5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --budget f0.5: no such label budget; this config's budgets are f1, f0.25, n20 "
                   "(experiment.label_fractions)"]


def test_every_stage_has_a_cli_module():
    for name, module in STAGES.items():
        assert module.startswith("core.commands.") and callable(importlib.import_module(module).cli), name


def test_run_reports_what_the_data_stage_skipped_whatever_builder_wrote_it(monkeypatch, tmp_path):
    """`core run` after `core data demo`: the demo builder's marker says skipped=True (up to date),
    the folder importer's lists the files it skipped; both must print, neither may crash."""
    from core.protocol import experiment
    from core.workspace import Workspace
    ws = Workspace(tmp_path)
    marker = {"labeled": {"skipped": True}}
    monkeypatch.setattr(experiment, "read_marker", lambda ws, stage: {"result": marker})
    assert experiment.data_report(ws) == []
    marker["labeled"] = {"skipped": [{"path": "a.png", "reason": "truncated"}], "empty_classes": ["x"]}
    assert experiment.data_report(ws) == ["skipped a.png: truncated", "empty class folder (no usable image): x"]


HOLD = ("import sys, time\nfrom core.workspace import writer_lock\n"
        "with writer_lock(sys.argv[1], sys.argv[2]):\n    print('held', flush=True)\n    time.sleep(float(sys.argv[3]))\n")


def _hold(root, seconds=600.0, command="python -m core run"):
    """Another process holding the workspace's writer lock (as a running `core run` does)."""
    import os
    import subprocess
    import sys
    from pathlib import Path
    repo = Path(__file__).resolve().parents[3]
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(root), command, str(seconds)], cwd=repo,
                            env={**os.environ, "PYTHONPATH": str(repo)}, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


@pytest.mark.parametrize("argv", [["run"], ["pretrain"], ["sample"], ["select"], ["data", "demo"], ["export-demo", "--to", "x"]])
def test_a_second_writer_exits_at_once_naming_the_first(argv, tmp_path, capsys):
    """One writer per workspace across processes: every command that writes refuses at once,
    naming the pid and command that holds the workspace, and writes nothing."""
    import time
    proc = _hold(tmp_path)
    try:
        t0 = time.perf_counter()
        assert main([*argv, "--workspace", str(tmp_path), "--preset", "tiny"]) == 2
        assert time.perf_counter() - t0 < 5
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: workspace busy: pid {proc.pid}, `python -m core run`")
        assert sorted(p.name for p in tmp_path.iterdir()) == [".writer.lock"]
    finally:
        proc.kill()
        proc.wait()


def test_the_lock_dies_with_its_process_and_wait_waits(tmp_path, capsys):
    """kill -9 frees the workspace (the OS drops a dead process's flock); --wait waits for a
    writer instead of exiting, then runs."""
    from core.protocol.jobs import JobBusy, JobRunner
    proc = _hold(tmp_path, command="lab: sampling")
    runner = JobRunner(workspace=tmp_path)                      # the app's compute slot
    with pytest.raises(JobBusy, match=rf"workspace busy: pid {proc.pid}, `lab: sampling`"):
        runner.start("pretrain", lambda progress=None, stop=None: None)
    proc.kill()
    proc.wait()
    runner.start("pretrain", lambda progress=None, stop=None: None)
    assert runner.wait(10)["state"] == "done"
    proc = _hold(tmp_path, seconds=2.0)
    try:
        assert main(["data", "demo", "--workspace", str(tmp_path), "--preset", "tiny", "--wait"]) == 0
        assert proc.poll() is not None                          # it ran once the holder had exited
        assert f"workspace busy: pid {proc.pid}, `python -m core run`; waiting" in capsys.readouterr().err
    finally:
        proc.kill()
        proc.wait()
