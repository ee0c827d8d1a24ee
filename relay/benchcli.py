"""`apns-relay bench`: run the benchmark harness of a source checkout (bench/ is not packaged)."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from types import ModuleType

CHECKOUT_ROOT = Path(__file__).resolve().parent.parent
HARNESS = "bench.command"


def harness() -> ModuleType | None:
    """bench.command, found on sys.path or beside this package in a checkout; None if neither."""
    if (CHECKOUT_ROOT / "bench" / "command.py").is_file() and str(CHECKOUT_ROOT) not in sys.path:
        sys.path.insert(0, str(CHECKOUT_ROOT))
    try:
        return importlib.import_module(HARNESS)
    except ModuleNotFoundError as error:
        if error.name not in ("bench", HARNESS):
            raise  # the harness is there but something it imports is not: say that, not this
        return None


def configure(parser: argparse.ArgumentParser) -> None:
    module = harness()
    if module is not None:
        module.configure(parser)


def run(args: argparse.Namespace) -> int:
    module = harness()
    if module is None:
        print(
            "apns-relay bench: the benchmark harness (bench/) is not importable: it ships with "
            f"the source checkout, not the package (looked in {CHECKOUT_ROOT / 'bench'}). "
            "Run it from a checkout: python -m bench [--quick]",
            file=sys.stderr,
        )
        return 2
    code: int = module.run(args)
    return code
