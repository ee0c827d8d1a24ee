"""`apns-relay bench`: run the benchmark harness of a source checkout (bench/ is not packaged)."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

CHECKOUT_ROOT = Path(__file__).resolve().parent.parent
HARNESS = "bench.command"


def harness() -> ModuleType | None:
    """bench.command, already importable or loaded from the checkout's bench/ folder (by its file
    location, leaving sys.path alone); None if neither."""
    package = HARNESS.partition(".")[0]
    folder = CHECKOUT_ROOT / package
    if package not in sys.modules and (folder / "__init__.py").is_file():
        spec = importlib.util.spec_from_file_location(
            package, folder / "__init__.py", submodule_search_locations=[str(folder)]
        )
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[package] = module
        spec.loader.exec_module(module)
    try:
        return importlib.import_module(HARNESS)
    except ModuleNotFoundError as error:
        if error.name not in (package, HARNESS):
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
