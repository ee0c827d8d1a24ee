"""The relay's import graph has no cycle, counting imports inside functions and under
TYPE_CHECKING (grimp records both): a cycle hidden by a deferred import is still a cycle. The layer
order itself is import-linter's contract in pyproject.toml, run by `make lint` (lint-imports)."""

from __future__ import annotations

import grimp
import pytest

PACKAGES = ("relay", "relay_devkit")


def strongly_connected(graph: grimp.ImportGraph) -> list[list[str]]:
    """Tarjan's strongly connected components of more than one module, or one importing itself."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(module: str) -> None:  # recursion depth is bounded by the number of modules
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in graph.find_modules_directly_imported_by(module):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1 or module in graph.find_modules_directly_imported_by(module):
                found.append(sorted(component))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return found


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph(*PACKAGES, include_external_packages=False, cache_dir=None)


def test_no_import_cycles(graph: grimp.ImportGraph) -> None:
    # The product's modules and the kit's.
    cycles = strongly_connected(graph)
    described = [
        " <-> ".join(
            f"{a} -> {b} (line {', '.join(str(d['line_number']) for d in details)})"
            for a in component
            for b in component
            if (details := graph.get_import_details(importer=a, imported=b))
        )
        for component in cycles
    ]
    assert not cycles, "import cycles:\n" + "\n".join(described)


def test_the_graph_counts_deferred_and_type_checking_imports(graph: grimp.ImportGraph) -> None:
    # The one deferred import of the kit (serve --dev) is in the graph: imports inside functions
    # count. relay.core.payload reads AppProfile under TYPE_CHECKING only: those count too.
    assert graph.direct_import_exists(
        importer="relay.commands.serve", imported="relay_devkit.dev_mode"
    )
    assert graph.direct_import_exists(
        importer="relay.core.payload", imported="relay.core.app_profile"
    )


def test_the_product_imports_the_kit_in_one_place(graph: grimp.ImportGraph) -> None:
    importers = {
        importer
        for module in graph.find_children("relay_devkit") | {"relay_devkit"}
        for importer in graph.find_modules_that_directly_import(module)
        if importer.split(".")[0] == "relay"
    }
    assert importers == {"relay.commands.serve"}
