"""`python -m core data check|demo|download|prepare ...`: the data layer from the shell."""
from __future__ import annotations

import argparse
import json

from core.cli import ProgressReporter, add_common, guarded, resolve_config, workspace
from core.config.store import save_config

MAX_LISTED = 50     # skipped files printed in the human report (all of them are in --json)
SWITCH = ("a workspace that has models, made from other data: move its models, synthetic sets and "
          "results to WORKSPACE/archive/ first")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m core data", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("check", help="what a folder / .npz / slide holds; skipped files with reasons")
    p.add_argument("path")
    p.add_argument("--json", action="store_true", help="print the full report as JSON")
    add_common(p, workspace_required=False)     # only for the config (data.max_image_pixels)
    p = sub.add_parser("demo", help="build the bundled demo data (real H&E) into a workspace")
    add_common(p)
    p.add_argument("--force", action="store_true", help="rebuild even when up to date")
    p.add_argument("--switch-data", action="store_true", help=SWITCH)
    p = sub.add_parser("download", help="fetch a public data set (resumable, md5-verified)")
    from core.data.download import DATASETS
    p.add_argument("name", choices=sorted(DATASETS))
    p.add_argument("--to", required=True, help="folder to download and extract into")
    p = sub.add_parser("prepare", help="index your labeled data (+ pools) into a workspace")
    add_common(p)
    p.add_argument("--labeled", required=True, help="ImageFolder (ROOT/CLASS/*.tif) or MedMNIST .npz")
    p.add_argument("--test", default=None, help="separate test ImageFolder (e.g. CRC-VAL-HE-7K)")
    p.add_argument("--unlabeled", action="append", default=[], metavar="PATH[:WEIGHT]",
                   help="unlabeled pool: folder, slide or large image (repeatable)")
    p.add_argument("--switch-data", action="store_true", help=SWITCH)
    return parser


def _print_check(report: dict) -> None:
    print(f"{report['path']}: {report.get('format')}")
    if report.get("format") == "npz":
        for split, info in report["splits"].items():
            print(f"  {split}: {info['images']} images of {info['shape']}")
            for name, n in info["counts"].items():
                print(f"    {name:<24} {n}")
        return
    print(f"  images: {report['images']}")
    if report.get("mpp") is not None or report.get("format") in ("slide", "image"):
        print(f"  size {report.get('width')}x{report.get('height')}, microns/px: "
              f"{report.get('mpp') or 'not stated'}, tissue fraction {report.get('tissue_fraction')}")
    for name, n in report.get("classes", {}).items():
        print(f"  {name:<28} {n}{'   <- EMPTY' if n == 0 else ''}")
    if report.get("sizes"):
        print("  sizes: " + ", ".join(f"{k} ({v})" for k, v in list(report["sizes"].items())[:8]))
    if report.get("empty_classes"):
        print(f"  empty class folders: {', '.join(report['empty_classes'])}")
    usable = [name for name, n in report.get("classes", {}).items() if n > 0 and not name.startswith("test/")]
    if report.get("format", "").startswith("folder (") and len(usable) < 2:
        print(f"  WARNING: {len(usable)} usable class(es); a classifier needs at least 2, so `run` will refuse this set")
    skipped = report.get("skipped", [])
    print(f"  skipped: {len(skipped)}")
    for item in skipped[:MAX_LISTED]:
        print(f"    {item['path']}: {item['reason']}")
    if len(skipped) > MAX_LISTED:
        print(f"    ... {len(skipped) - MAX_LISTED} more (use --json for all)")


@guarded
def cli(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.command == "check":
        from core.data.tables import check
        report = check(args.path, resolve_config(args).data.max_image_pixels)
        print(json.dumps(report, indent=2, default=str)) if args.json else _print_check(report)
        return 0
    if args.command == "download":
        from core.data.download import download
        with ProgressReporter() as progress:
            result = download(args.name, args.to, progress=progress)
        print(json.dumps(result, indent=2))
        return 0
    from core.protocol.sources import choose_sources
    cfg = resolve_config(args)
    ws = workspace(args)
    if args.command == "demo":
        choose_sources(ws, switch=args.switch_data, demo=True)
    else:
        choose_sources(ws, args.labeled, args.test, args.unlabeled, switch=args.switch_data)
    save_config(cfg, ws.root)
    if args.command == "demo":
        from core.data.demo import build_demo
        with ProgressReporter() as progress:
            result = build_demo(ws, cfg, force=args.force, progress=progress)
        state = "up to date" if result["skipped"] else f"built in {result['seconds']} s"
        print(f"demo data {state} in {ws.data_dir} (preset {cfg.preset}, {cfg.data.image_size} px "
              f"at {cfg.data.mpp} um/px)")
        print(json.dumps({"counts": result["counts"], "pools": result["pools"]}, indent=2))
        return 0
    from core.data.labeled import prepare_labeled
    from core.data.pools import prepare_pools
    result = prepare_labeled(ws, cfg, args.labeled, args.test)
    for note in result["notes"]:
        print(f"note: {note}")
    print(json.dumps(result["counts"], indent=2))
    if result["empty_classes"]:
        print(f"empty class folders: {', '.join(result['empty_classes'])}")
    if result["skipped"]:
        print(f"skipped {len(result['skipped'])} file(s); `python -m core data check PATH` lists them")
    if args.unlabeled:
        with ProgressReporter() as progress:
            pools = prepare_pools(ws, cfg, args.unlabeled, progress=progress)
        for note in pools["notes"]:
            print(f"note: {note}")
        print(f"pools: {json.dumps(pools['pools'])}; skipped {len(pools['skipped'])}")
    return 0
