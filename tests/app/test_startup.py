"""What the lab does at start (app.py): a killed first install is repaired, not served half."""
from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

from core.protocol import demo_models
from core.protocol.demo_models import install_demo, install_state
from core.workspace import Workspace

ROOT = Path(__file__).resolve().parents[2]
BUNDLE = ROOT / "assets" / "demo_models"


def _app_script():
    spec = importlib.util.spec_from_file_location("app_main", ROOT / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def bundle(tmp_path):
    return Path(shutil.copytree(BUNDLE, tmp_path / "bundle"))


def test_a_killed_install_is_repaired_at_the_next_start(bundle, tmp_path, monkeypatch):
    """Killed while models/ is being filled: the next start installs again and the workspace
    has every model, its config and results, and every stage is done."""
    from app.context import AppContext
    app_main = _app_script()
    real, calls = demo_models._install_top, []

    def dies_in_models(bundle, info, top, names, ws):
        calls.append(top)
        if top == "models":
            real(bundle, info, top, names[: len(names) // 2], ws)    # half of models/, then the kill
            raise KeyboardInterrupt
        real(bundle, info, top, names, ws)
    monkeypatch.setattr(demo_models, "_install_top", dies_in_models)
    ws = Workspace(tmp_path / "ws")
    with pytest.raises(KeyboardInterrupt):
        install_demo(bundle, ws)
    from core.models import missing_models
    assert install_state(ws) == "installing" and ws.models_dir.exists() and missing_models(ws)
    assert not ws.config_file.exists()              # the root's own files come last
    monkeypatch.setattr(demo_models, "_install_top", real)
    ctx = AppContext.create(ws.root)
    done = app_main.prepare_workspace(ctx, bundle=bundle)
    assert done[0].startswith("repaired a half-finished install") and install_state(ws) == "installed"
    from core.config.presets import preset
    from core.protocol.experiment import _steps, data_sources
    from core.protocol.stages import is_done
    assert not missing_models(ws) and ws.config_file.exists() and ws.summary_json.exists()
    clean = Workspace(tmp_path / "clean")
    install_demo(bundle, clean)                     # what an install never killed gives
    assert _files(ws) == _files(clean)
    cfg = preset("demo")

    def done(w):          # whether the bundle is done under today's preset is test_demo_bundle's question
        return [is_done(v, cfg, s, data_sources() if s == "data" else None) for s, v in _steps(w, cfg)]
    assert done(ws) == done(clean)


def _files(ws: Workspace) -> dict[str, str]:
    """Every file of a workspace with its content hash, but the lock, the install record and the
    demo data's build record (it holds the seconds the build took)."""
    from core.io import file_sha256
    return {p.relative_to(ws.root).as_posix(): file_sha256(p) for p in sorted(ws.root.rglob("*"))
            if p.is_file() and p.name not in (".writer.lock", "install.json") and p != ws.demo_data_marker}
