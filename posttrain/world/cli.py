"""``posttrain world build|show|check``: build the toy world, print samples of it, or measure it."""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="posttrain world", description="the embedded toy world")
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name, help_ in (("build", "build (or reuse) the world: datasets, tokenizer, base model"),
                        ("show", "print a few rows of every dataset with their gold scores"),
                        ("check", "build, then print the world's measured properties")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("--out", "--world", dest="out", default=None,
                       help="world folder (default $POSTTRAIN_WORLD or .posttrain/world)")
        if name in ("build", "check"):
            p.add_argument("--seed", type=int, default=0)
            p.add_argument("--force", action="store_true", help="rebuild everything")
        if name == "show":
            p.add_argument("-n", type=int, default=3, help="rows per dataset")
    try:
        args = ap.parse_args(argv)
    except SystemExit as e:  # argparse already printed usage / the error
        return int(e.code or 0) and 2
    if args.cmd == "build":
        from posttrain.world.build import build_world

        paths = build_world(args.out, seed=args.seed, force=args.force, log=print)
        m = paths.read_manifest()
        print(f"world ready at {paths.root} (content hash {m['content_hash'][:12]})")
    elif args.cmd == "show":
        from posttrain.world.show import show

        print(show(args.out, n=args.n))
    elif args.cmd == "check":
        from posttrain.world.check import report

        report(args.out, seed=args.seed, force=args.force)
    return 0


