#!/usr/bin/env python
"""Generate flatplug_robustbench/leaderboard.json from a RobustBench ``model_info`` folder.

    python adapters/robustbench/scripts/make_leaderboard_snapshot.py ../shared/robustbench/model_info \
        --date 2025-03-31

The folder is ``model_info`` of a RobustBench checkout (``<dataset>/<threat_model>/<Name>.json``).
The snapshot keeps the fields in ``flatplug_robustbench.leaderboard.SNAPSHOT_FIELDS`` of every
record, values as upstream writes them. Rerunning on the same folder gives the same file.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import importlib.util

HERE = Path(__file__).resolve().parent
PACKAGE = HERE.parent / "flatplug_robustbench"


def _leaderboard_module():
    """flatplug_robustbench/leaderboard.py by itself (stdlib only; the package would import torch)."""
    spec = importlib.util.spec_from_file_location("_flatplug_robustbench_leaderboard", PACKAGE / "leaderboard.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_info", help="a RobustBench model_info folder")
    parser.add_argument("--date", help="the date of the RobustBench snapshot the folder comes from (YYYY-MM-DD)")
    leaderboard = _leaderboard_module()
    parser.add_argument("--out", default=str(PACKAGE / leaderboard.SNAPSHOT_FILE),
                        help="where to write the snapshot (default: the package's leaderboard.json)")
    args = parser.parse_args(argv)
    doc = leaderboard.build_snapshot(args.model_info, date=args.date)
    text = json.dumps(doc, indent=1, sort_keys=False, ensure_ascii=False) + "\n"
    Path(args.out).write_text(text, encoding="utf-8")
    counts = ", ".join(f"{ds} {tm} {len(names)}" for ds, threats in doc["models"].items() for tm, names in threats.items())
    print(f"wrote {args.out}: {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
