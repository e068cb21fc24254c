"""Table writers shared by processes: a row per file, however many writers add rows at once."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

from core.io import upsert_csv

ROOT = Path(__file__).resolve().parents[2]
COLUMNS = ["file", "seed", "writer"]
WRITE = ("import sys\nfrom core.io import upsert_csv\n"
         "for batch in range(150):\n"
         "    rows = ''.join(f'c/img-{k}.png,{k},{sys.argv[2]}\\n' for k in range(batch * 4, batch * 4 + 8))\n"
         "    upsert_csv(sys.argv[1], ['file', 'seed', 'writer'], rows)\n")


def test_two_processes_adding_the_same_files_leave_one_row_each(tmp_path):
    table = tmp_path / "manifest.csv"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", WRITE, str(table), name], cwd=ROOT, env=env)
             for name in ("a", "b")]
    assert [p.wait(120) for p in procs] == [0, 0]
    frame = pd.read_csv(table)
    assert list(frame.columns) == COLUMNS and frame["file"].is_unique and len(frame) == 604


def test_a_listed_file_is_replaced_and_other_rows_keep_their_bytes(tmp_path):
    table = tmp_path / "manifest.csv"
    table.write_text("file,seed,writer\nx.png,1,old\ny.png,2.50,old\nx.png,1,older-duplicate\n")
    upsert_csv(table, COLUMNS, "x.png,1,new\nz.png,3,new")
    assert table.read_text() == "file,seed,writer\ny.png,2.50,old\nx.png,1,new\nz.png,3,new\n"
