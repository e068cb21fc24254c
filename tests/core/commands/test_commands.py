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
