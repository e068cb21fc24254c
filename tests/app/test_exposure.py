"""No open door: exposed launches need a login, only the shown folders are served, uploads are
capped, output galleries take no uploads, and the upload cache starts empty."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def app_main(monkeypatch):
    """app.py's main() with Blocks.launch recorded instead of serving."""
    import gradio as gr
    spec = importlib.util.spec_from_file_location("lab_app_main", ROOT / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    launched = []
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kw: launched.append(kw))
    monkeypatch.setenv("GRADIO_TEMP_DIR", "/tmp/gradio")         # main() repoints it; undone after
    return module.main, launched


@pytest.mark.parametrize("flags", [["--share"], ["--host", "0.0.0.0"], ["--host", "192.168.1.5"],
                                   ["--host", "lab.example.org"]])
def test_exposed_without_auth_is_refused(app_main, tmp_path, capsys, flags):
    main, launched = app_main
    assert main(["--workspace", str(tmp_path / "ws"), "--no-setup", *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--auth" in err[0] and "--insecure" in err[0]
    assert launched == []


def test_exposed_with_auth_or_insecure_launches(app_main, tmp_path, capsys):
    main, launched = app_main
    ws = str(tmp_path / "ws")
    assert main(["--workspace", ws, "--no-setup", "--host", "0.0.0.0", "--auth", "u:p"]) == 0
    assert launched[-1]["auth"] == ("u", "p") and "warning" not in capsys.readouterr().err
    assert main(["--workspace", ws, "--no-setup", "--share", "--insecure"]) == 0
    assert launched[-1]["share"] is True and "warning: --share without --auth" in capsys.readouterr().err
    assert main(["--workspace", ws, "--no-setup", "--host", "127.0.0.1"]) == 0
    assert main(["--workspace", ws, "--no-setup", "--host", "localhost"]) == 0
    assert len(launched) == 4 and launched[-1]["max_file_size"]


def test_upload_cache_starts_empty(app_main, tmp_path):
    import os
    main, _ = app_main
    stale = tmp_path / "ws" / "cache" / "gradio" / "abc123" / "left-by-a-killed-server.png"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"x")
    assert main(["--workspace", str(tmp_path / "ws"), "--no-setup"]) == 0
    assert not stale.exists() and os.environ["GRADIO_TEMP_DIR"] == str(stale.parents[1])


def test_only_the_shown_folders_are_served(lab_ctx):
    from app import launch_kwargs
    allowed = [Path(p) for p in launch_kwargs(lab_ctx)["allowed_paths"]]
    ws = lab_ctx.workspace
    for secret in (ws.root / "config.json", ws.unet_dir, ws.checkpoints_dir, ws.labeled_dir,
                   *lab_ctx.data_roots):
        assert not any(secret == a or secret.is_relative_to(a) for a in allowed), secret
    assert ws.samples_dir in allowed and ws.synthetic_dir in allowed


def test_output_galleries_take_no_uploads(lab_ctx):
    import gradio as gr

    from app import create_app
    demo = create_app(lab_ctx)
    galleries = [b for b in demo.blocks.values() if isinstance(b, gr.Gallery)]
    assert len(galleries) == 2 and all(g.interactive is False for g in galleries)


def test_login_comes_from_a_file_or_the_environment(app_main, tmp_path, capsys, monkeypatch):
    """Credentials out of the process list: --auth-file or LAB_AUTH; a malformed entry is one
    line naming where it is, never echoing a password."""
    main, launched = app_main
    ws = str(tmp_path / "ws")
    (tmp_path / "auth").write_text("# the lab's login\nann:s3cret word\n")
    assert main(["--workspace", ws, "--no-setup", "--host", "0.0.0.0", "--auth-file", str(tmp_path / "auth")]) == 0
    assert launched[-1]["auth"] == ("ann", "s3cret word")
    monkeypatch.setenv("LAB_AUTH", "bob:pw1\ncid:pw2")
    assert main(["--workspace", ws, "--no-setup", "--share"]) == 0
    assert launched[-1]["auth"] == [("bob", "pw1"), ("cid", "pw2")] and "warning" not in capsys.readouterr().err
    monkeypatch.delenv("LAB_AUTH")
    (tmp_path / "bad").write_text("ann:fine\nno-colon-secret\n")
    assert main(["--workspace", ws, "--no-setup", "--share", "--auth-file", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {tmp_path / 'bad'}:2: expected user:password (a user name, a colon, a password)"]
    assert len(launched) == 2


def test_failed_logins_from_one_client_wait_longer_and_longer(lab_ctx):
    """120 wrong passwords no longer fit in 1.6 s: after n failures the next attempt waits
    0.5 * 2^(n-1) s; the right password still gets in, and resets the count."""
    import time

    import httpx

    from app import create_app, launch_kwargs
    from served import free_port
    demo = create_app(lab_ctx)
    demo.queue(default_concurrency_limit=1)
    demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True,
                auth=("ann", "right"), **launch_kwargs(lab_ctx))
    try:
        url = demo.local_url.rstrip("/") + "/login"
        took = []
        for password in ("w1", "w2", "w3", "w4", "right", "w5"):
            t0 = time.perf_counter()
            status = httpx.post(url, data={"username": "ann", "password": password}, timeout=60).status_code
            took.append((status, time.perf_counter() - t0))
        assert [s for s, _ in took] == [400, 400, 400, 400, 200, 400]
        waits = [t for _, t in took]
        assert waits[1] >= 0.5 and waits[2] >= 1.0 and waits[3] >= 2.0 and waits[4] >= 4.0, waits
        assert waits[5] < 2.0, waits                    # the success reset the count
    finally:
        demo.close()
