"""``edgewatch preflight SCRIPT.py[:FACTORY]``: a pre-flight from the command line.

The script exposes a function (``preflight`` unless named after the colon) that takes
no arguments and returns the keyword arguments of :func:`edgewatch.preflight`: at least
``model``, ``optimizer``, ``probe``, ``batches`` and ``loss``, and usually
``scheduler`` and ``total_steps``. It is imported, not run as ``__main__``, so a
training script can expose the factory and keep its ``if __name__ == "__main__":``.
Exit status: 0 safe or borderline, 1 unsafe.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any


def add_parser(sub: Any) -> None:
    p = sub.add_parser("preflight", help="judge a training script's LR plan before the job")
    p.add_argument("target", help="SCRIPT.py[:FACTORY] (FACTORY defaults to 'preflight')")
    p.add_argument("--steps", type=int, help="trial steps (default 200)")
    p.add_argument("--time-budget", type=float, help="seconds in all (default 180)")
    p.add_argument("-o", "--png", help="also draw the report to this PNG")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cli)


def cli(args: argparse.Namespace) -> int:
    from edgewatch.trial.run import preflight

    path, _, name = args.target.partition(":")
    kwargs = dict(load_factory(path, name or "preflight")())
    if args.steps is not None:
        kwargs["steps"] = args.steps
    if args.time_budget is not None:
        kwargs["time_budget"] = args.time_budget
    report = preflight(**kwargs)
    print(json.dumps(report.to_record()) if args.json else report)
    if args.png:
        report.save_png(args.png)
        print(f"wrote {args.png}", file=sys.stderr)
    return 1 if report.verdict == "unsafe" else 0


def load_factory(path: str, name: str) -> Any:
    file = Path(path)
    if not file.is_file():
        raise SystemExit(f"edgewatch preflight: no such script {path!r}")
    spec = importlib.util.spec_from_file_location(f"_edgewatch_preflight_{file.stem}", file)
    if spec is None or spec.loader is None:
        raise SystemExit(f"edgewatch preflight: cannot import {path!r}")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(file.parent.resolve()))  # the script's own imports
    spec.loader.exec_module(module)
    factory = getattr(module, name, None)
    if not callable(factory):
        raise SystemExit(
            f"edgewatch preflight: {path} has no function {name!r}; expose one that returns "
            "edgewatch.preflight's keyword arguments, or name it: SCRIPT.py:FUNCTION"
        )
    return factory
