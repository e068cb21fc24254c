"""Launch the HistoDiffusion Lab: `python app.py --workspace workspaces/demo` (see `--help`)."""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

ROOT = Path(__file__).resolve().parent
DEMO_BUNDLE = ROOT / "assets" / "demo_models"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--workspace", type=Path, default=ROOT / "workspaces" / "demo",
                   help="workspace folder (default: workspaces/demo)")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--share", action="store_true", help="also open a public Gradio share link")
    p.add_argument("--auth-file", type=Path, default=None, metavar="FILE",
                   help="require a login: one user:password per line (or set LAB_AUTH=user:password)")
    p.add_argument("--auth", default=None, metavar="USER:PASS",
                   help="require this login (shown to anyone who lists processes: prefer --auth-file)")
    p.add_argument("--insecure", action="store_true",
                   help="allow --share or a non-loopback --host without --auth (prints a warning)")
    p.add_argument("--data-root", dest="data_roots", action="append", default=[], type=Path,
                   help="a folder (besides the workspace) whose paths may be typed into the UI; repeatable")
    p.add_argument("--preset", default=None, help="tiny | demo | paper (default: the workspace's config)")
    p.add_argument("--no-setup", action="store_true",
                   help="do not lay demo data / bundled demo models into an empty workspace")
    args = p.parse_args(argv)
    if args.auth is not None and ":" not in args.auth:
        p.error("--auth must be USER:PASS")
    return args


def login(args: argparse.Namespace) -> tuple | list | None:
    """The launch's `auth`: one (user, password), or a list of them, from --auth, --auth-file and
    LAB_AUTH; None without any (UserError for a malformed entry)."""
    from app.auth import credentials
    found = credentials(args.auth, args.auth_file)
    return None if not found else (found[0] if len(found) == 1 else found)


def is_loopback(host: str) -> bool:
    import ipaddress
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False                 # a host name or 0.0.0.0-like wildcard: reachable from outside


def exposure_check(args: argparse.Namespace, auth=None) -> str | None:
    """An error line when the lab would listen beyond this machine without a login; a warning
    goes to stderr when --insecure allows it anyway."""
    if auth or args.auth or not (args.share or not is_loopback(args.host)):
        return None
    how = "--share" if args.share else f"--host {args.host}"
    if not args.insecure:
        return (f"{how} opens the lab (which runs jobs and reads the workspace) to the network "
                "without a login; add --auth-file FILE (or LAB_AUTH=user:password, or --auth USER:PASS), "
                "or --insecure to do it anyway")
    print(f"warning: {how} without --auth: anyone who can reach this port can use the lab",
          file=sys.stderr, flush=True)
    return None


def prepare_workspace(ctx, bundle: Path = DEMO_BUNDLE, preset_name: str | None = None) -> list[str]:
    """Fill an empty workspace: the bundled demo models (with their data, results and config)
    when it has no models, else demo data when it has no labeled data; an install a killed
    process left half done is installed again. A workspace made from your own data gets
    neither. Returns what was done."""
    from core.config.presets import config_for
    from core.errors import UserError
    from core.protocol.demo_models import install_state
    from core.protocol.sources import remembered
    done = []
    ws = ctx.workspace
    half = install_state(ws) == "installing"
    saved = remembered(ws)
    own_data = saved is not None and saved["labeled"] != "demo"
    if bundle.exists() and (half or not ws.models_dir.exists()) and not own_data:
        from core.protocol.demo_models import install_demo
        t = time.time()
        try:
            install_demo(bundle, ws, overwrite=half)
            what = "repaired a half-finished install of" if half else "installed"
            done.append(f"{what} the bundled demo models from {bundle} in {time.time() - t:.1f} s")
        except UserError as e:                   # e.g. a damaged bundle: the lab still opens
            done.append(f"demo models not installed: {e}")
    if not ws.split_manifest.exists() and not own_data:
        from core.data.demo import build_demo
        from core.workspace import writer_lock
        t = time.time()
        with writer_lock(ws.root, "lab: build the demo data"):
            build_demo(ws, ctx.config)
        done.append(f"built demo data in {time.time() - t:.1f} s")
    ctx.config = config_for(ws, preset_name)     # install_demo brings its config
    return done


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from app import create_app, fresh_upload_cache, launch_kwargs
    from app.context import AppContext
    from core.errors import UserError
    from core.errors import ConfigError
    try:
        auth = login(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if (problem := exposure_check(args, auth)) is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    if args.auth:
        print("note: --auth shows the password to anyone who lists this machine's processes (ps); "
              "--auth-file FILE or LAB_AUTH=user:password keep it out of sight", file=sys.stderr)
    try:
        ctx = AppContext.create(args.workspace, args.data_roots, preset_name=args.preset)
        if not args.no_setup:
            for line in prepare_workspace(ctx, preset_name=args.preset):
                print(line, flush=True)
    except (UserError, ConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        from core.io import describe_write_error
        if (line := describe_write_error(e)) is None:
            raise
        print(f"error: {line}", file=sys.stderr)
        return 1
    fresh_upload_cache(ctx)
    demo = create_app(ctx)
    demo.queue(default_concurrency_limit=1).launch(
        server_name=args.host, server_port=args.port, share=args.share, auth=auth,
        **launch_kwargs(ctx))
    return 0


if __name__ == "__main__":
    sys.exit(main())
