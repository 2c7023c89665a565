"""`posttrain check-data FILE [--kind KIND]`: validate a dataset and print its kind and size."""

from __future__ import annotations

import argparse

from posttrain.data.formats import KINDS
from posttrain.data.load import load_rows


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="posttrain check-data",
                                description="Validate a dataset (file, save_to_disk folder or hub id).")
    p.add_argument("spec", help="dataset path or hub id")
    p.add_argument("--kind", action="append", choices=list(KINDS),
                   help="accepted kind (repeatable); default: any")
    p.add_argument("--split", default="train", help="split of a DatasetDict or hub dataset")
    args = p.parse_args(argv)
    rows = load_rows(args.spec, kinds=args.kind, split=args.split)
    print(f"{rows.source}: {len(rows)} rows of kind '{rows.kind}'")
    return 0
