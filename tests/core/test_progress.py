"""The stage CLIs' progress reporter: sparse plain lines into a log, a tqdm bar on a terminal."""
from __future__ import annotations

import io

from core.cli import ProgressReporter


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _run(reporter: ProgressReporter, stage: str, steps: int, **extra) -> None:
    for step in range(1, steps + 1):
        reporter({"stage": stage, "step": step, "total": steps, **extra})


def test_a_log_gets_a_few_lines_not_one_per_step():
    log = io.StringIO()
    with ProgressReporter(log) as progress:
        _run(progress, "pretrain", 1000, loss=0.5)
        _run(progress, "sample", 3)
    lines = log.getvalue().splitlines()
    pretrain = [line for line in lines if line.startswith("pretrain")]
    assert 2 <= len(pretrain) <= 11                       # about one per tenth, never one per step
    assert pretrain[-1].startswith("pretrain: 100% 1000/1000") and "loss=0.5" in pretrain[-1]
    assert lines[-1].startswith("sample: 100% 3/3")       # the next stage reports on its own


def test_a_stopped_stage_still_reports_where_it_stopped():
    log = io.StringIO()
    with ProgressReporter(log) as progress:
        for step in range(1, 538):
            progress({"stage": "pretrain", "step": step, "total": 1000})
    assert log.getvalue().splitlines()[-1].startswith("pretrain:  54% 537/1000")


def test_a_stage_starting_over_is_a_new_stage():
    """Sampling reports each class from 0 again under the same stage name: one bar per class."""
    for stream in (io.StringIO(), FakeTerminal()):
        with ProgressReporter(stream) as progress:
            for name in ("tumor", "stroma"):
                progress({"stage": "sample", "class": name, "step": 4, "total": 4})
            progress({"stage": "pipeline", "step": 0, "total": 0, "pipeline_step": 2, "pipeline_total": 7})
        lines = [line.split("\r")[-1] for line in stream.getvalue().split("\n") if line]   # a bar's last state
        assert [line.split("class=")[-1].rstrip("]") for line in lines[:2]] == ["tumor", "stroma"], lines
        assert lines[2:] == ["[pipeline] started (stage 3 of 7)"]


def test_a_terminal_gets_one_tqdm_bar_per_stage():
    screen = FakeTerminal()
    with ProgressReporter(screen) as progress:
        _run(progress, "pretrain", 1000)
        _run(progress, "classifier", 10)
    text = screen.getvalue()
    first, second = text.split("classifier", 1)
    assert "\r" in first and "|" in first and "1000/1000" in first and "it/s" in first
    assert "\n" in first.rsplit("1000/1000", 1)[1]      # the first bar was closed before the next began
    assert "10/10" in second and second.endswith("\n")
