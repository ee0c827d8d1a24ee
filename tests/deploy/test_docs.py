"""The README and docs/ hold together: every page is linked from the README, every relative link
and #anchor leads somewhere, and every module the text names exists in this checkout."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

# The checkout, wherever in tests/ this file is kept.
ROOT = next(
    path for path in Path(__file__).resolve().parents if (path / "pyproject.toml").is_file()
)
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
# A path a reader would look for: starting at the checkout or inside relay/ or relay_devkit/
# (`relay/store/queue.py`, `store/queue`, `apns_sim/`); checked only when its first segment is a
# directory here, so an action name such as `ixn/chat/refresh` is not taken for one.
PATH = re.compile(r"(?<![\w./:{-])((?:[a-z_][\w-]*/)+[\w.*<>-]*)")
# A dotted module name: `relay.store.queue`, `relay.telemetry.metrics.action_label`.
DOTTED = re.compile(r"(?<![\w./-])((?:relay|relay_devkit)(?:\.\w+)+)")
FILE_SUFFIXES = {"yaml", "yml", "json", "md", "py", "lua", "toml", "txt", "example"}
SEARCH_ROOTS = (ROOT, ROOT / "relay", ROOT / "relay_devkit")


def prose(text: str) -> str:
    """The text without fenced blocks: a shell session's paths are the reader's, not ours."""
    return re.sub(r"^```.*?^```", "", text, flags=re.DOTALL | re.MULTILINE)


def slug(title: str) -> str:
    """GitHub's anchor for a heading."""
    title = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", title.strip().lower())
    return re.sub(r"[^\w\- ]", "", title).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for line in prose(page.read_text()).splitlines():
        if heading := re.match(r"#{1,6} (.*)", line):
            base = slug(heading[1])
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


def relative_links(page: Path) -> list[str]:
    return [
        target
        for target in LINK.findall(prose(page.read_text()))
        if not re.match(r"[a-z]+:", target)
    ]


def test_the_readme_is_a_front_door_with_the_two_commands() -> None:
    """At most 300 lines, and its quickstart's two commands are the Makefile's."""
    text = README.read_text()
    assert len(text.splitlines()) <= 300
    quickstart = text.split("\n## Quickstart\n", 1)[1].split("\n## ", 1)[0]
    assert "make run    # the relay in development mode (serve --dev)" in quickstart
    assert "make test   # the whole suite" in quickstart
    makefile = (ROOT / "Makefile").read_text()
    assert "\nrun: " in makefile
    assert "--dev" in makefile.split("\nrun: ", 1)[1].split("\n\n", 1)[0]
    assert "\ntest: lint types unit" in makefile


def test_every_docs_page_is_linked_from_the_readme() -> None:
    linked = {
        (README.parent / target.partition("#")[0]).resolve() for target in relative_links(README)
    }
    assert [page.name for page in DOCS if page.resolve() not in linked] == []


def broken_links(page: Path) -> list[str]:
    broken = []
    for target in relative_links(page):
        path, _, anchor = target.partition("#")
        goal = (page.parent / path).resolve() if path else page
        if not goal.exists() or (anchor and (goal.suffix != ".md" or anchor not in anchors(goal))):
            broken.append(target)
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_relative_link_and_anchor_leads_somewhere(page: Path) -> None:
    assert broken_links(page) == []


def path_exists(name: str) -> bool:
    if "<" in name or "/." in name:
        return True  # a pattern (`profile-<what>.md`) or what a run makes (`bench/.work/`)
    first = name.split("/", 1)[0]
    roots = [root for root in SEARCH_ROOTS if (root / first).is_dir()]
    if not roots:
        return True  # not a path of ours
    name = name.rstrip("/.")
    if "*" in name:
        return any(any(root.glob(name)) for root in roots)
    return any((root / name).exists() or (root / f"{name}.py").exists() for root in roots)


def defines(module: Path, name: str) -> bool:
    return bool(
        re.search(
            rf"^(?:(?:async )?def |class )?{re.escape(name)}\b", module.read_text(), re.MULTILINE
        )
    )


def dotted_exists(name: str) -> bool:
    parts = name.split(".")
    if parts[-1] in FILE_SUFFIXES:
        return True  # relay.yaml, relay.example.yaml: a file, not a module
    where = ROOT / parts[0]
    for index, part in enumerate(parts[1:], start=1):
        if (where / part).is_dir():
            where = where / part
        elif (where / f"{part}.py").is_file():
            where = where / f"{part}.py"
            rest = parts[index + 1 :]
            return not rest or defines(where, rest[0])
        else:
            # an attribute of the package itself, or no such module
            init = where / "__init__.py"
            return index > 1 and init.is_file() and defines(init, part)
    return True


def named_modules(page: Path) -> list[str]:
    names = []
    for code in re.findall(r"`([^`\n]+)`", prose(page.read_text())):
        if code.startswith("kubectl "):
            continue  # its `deploy/<name>` is a Kubernetes object
        names += [("path", found) for found in PATH.findall(code)]
        names += [("dotted", found) for found in DOTTED.findall(code)]
    return [
        name
        for kind, name in names
        if not (path_exists(name) if kind == "path" else dotted_exists(name))
    ]


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_module_named_exists(page: Path) -> None:
    assert named_modules(page) == []


def test_the_checks_catch_what_they_are_for(tmp_path: Path) -> None:
    """A check that cannot fail is worse than none: each one, fed a fault, finds it."""
    assert not path_exists("relay/store/no_such_module.py")
    assert not path_exists("store/no_such_module")
    assert path_exists("relay/store/queue.py")
    assert path_exists("store/queue")
    assert path_exists("ixn/chat/refresh")  # an action name, not a path
    assert not dotted_exists("relay.store.no_such_module")
    assert not dotted_exists("relay.no_such_package.queue")
    assert dotted_exists("relay.store.queue")
    assert dotted_exists("relay.yaml")
    assert slug("Is my Apple setup right? `apns-relay check`") == (
        "is-my-apple-setup-right-apns-relay-check"
    )
    page = tmp_path / "page.md"
    page.write_text(
        "# A page\n\n[here](#a-page) [gone](#nowhere) [file](no-such.md) [up](../README.md)\n"
        "`relay/store/gone.py`\n"
    )
    assert anchors(page) == {"a-page"}
    assert broken_links(page) == ["#nowhere", "no-such.md", "../README.md"]
    assert named_modules(page) == ["relay/store/gone.py"]
