"""The boundary between the product (relay) and the development kit (relay_devkit): production
processes load nothing of the kit, and the production image's build holds none of it."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import TypeVar

import pytest
import yaml
from eventually import eventually_blocking
from production_config import production_document

from relay.core import fields, model, payload
from relay.http.problems import INVALID_INPUT_ANSWERS, REFUSAL_STATUSES
from relay.store.refusals import QueueRefusal
from relay_devkit.embedded import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
KIT = "relay_devkit"
Refusal = TypeVar("Refusal", bound=Exception)
# What the production roles import on their way in; none of it may pull the kit in.
PRODUCTION_MODULES = (
    "relay.cli",
    "relay.runtime",
    "relay.commands.serve",
    "relay.commands.check",
    "relay.commands.remote",
    "relay.http.app",
    "relay.delivery.worker",
)


def imported_modules(importtime_stderr: str) -> set[str]:
    """Every module named in `python -X importtime` output ("import time: self | cumulative |
    name", the name indented by its depth)."""
    return {
        line.rsplit("|", 1)[1].strip()
        for line in importtime_stderr.splitlines()
        if line.startswith("import time:") and line.count("|") == 2
    }


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def test_production_entry_points_import_nothing_of_the_kit() -> None:
    script = (
        "import sys\n"
        f"for name in {PRODUCTION_MODULES!r}: __import__(name)\n"
        "from relay.cli import build_parser\n"
        "for role in ('serve', 'api', 'worker', 'push', 'status'): build_parser(role)\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] == {KIT!r}))\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert completed.stdout.strip() == "[]", completed.stdout


@pytest.mark.parametrize("role", ["api", "worker"])
def test_a_serving_production_process_loads_nothing_of_the_kit(
    role: str, redis_url: str, tmp_path: Path
) -> None:
    config = tmp_path / "relay.yaml"
    config.write_text(yaml.safe_dump(production_document(tmp_path, redis_url)))
    port = free_port()
    output = tmp_path / "stderr.txt"
    with output.open("wb") as stderr:
        process = subprocess.Popen(
            [
                sys.executable,
                "-X",
                "importtime",
                "-m",
                "relay.cli",
                role,
                "--config",
                str(config),
                "--port",
                str(port),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        # Serving (its /healthz answers): every import of startup has happened by then.

        def serving() -> bool:
            assert process.poll() is None, output.read_text()[-3000:]
            return healthy(f"http://127.0.0.1:{port}/healthz")

        try:
            eventually_blocking(serving, timeout_s=30, interval_s=0.05, what=f"{role} serving")
        except AssertionError as error:
            raise AssertionError(f"{error}: {output.read_text()[-3000:]}") from None
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    text = output.read_text()
    assert process.returncode == 0, text[-3000:]
    modules = imported_modules(text)
    assert "relay.http.app" in modules  # the parse found the imports at all
    assert sorted(m for m in modules if m.split(".")[0] == KIT) == []


def dockerfile_build_sources() -> list[str]:
    """What the Dockerfile copies from the build context into the directory `pip install .` builds
    (a relative destination, under WORKDIR); a copy elsewhere is not part of the package."""
    sources = []
    for line in (REPO_ROOT / "Dockerfile").read_text().splitlines():
        if re.match(r"COPY\s", line) and "--from=" not in line:
            *copied, destination = line.split()[1:]
            if not destination.startswith("/"):
                sources.extend(copied)
    return sources


def test_the_production_image_copies_only_the_product_into_its_build() -> None:
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    sources = dockerfile_build_sources()
    assert "relay" in sources
    assert not [s for s in sources if s.startswith(KIT) or s in (".", "./")], sources
    # The kit joins the build only for the development image, never by default.
    assert "ARG DEVKIT=false" in dockerfile
    assert 'if [ "$DEVKIT" = "true" ]; then cp -r /opt/devkit/relay_devkit ./relay_devkit' in (
        dockerfile
    )


@pytest.mark.timeout(240)
def test_the_image_build_context_installs_no_kit(tmp_path: Path) -> None:
    """What `pip install .` puts in the image: setuptools' build of exactly what the Dockerfile
    copies (the files a wheel of it holds), by the package discovery of pyproject.toml."""
    context = tmp_path / "context"
    for source in dockerfile_build_sources():
        target = context / source
        target.parent.mkdir(parents=True, exist_ok=True)
        origin = REPO_ROOT / source
        if origin.is_dir():
            shutil.copytree(origin, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(origin, target)
    built = tmp_path / "build"
    completed = subprocess.run(
        [
            sys.executable,
            "-c",
            "import setuptools; setuptools.setup()",
            "build_py",
            "--build-lib",
            str(built),
        ],
        cwd=context,
        capture_output=True,
        text=True,
        timeout=200,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert sorted(p.name for p in built.iterdir()) == ["relay"]
    assert (built / "relay" / "store" / "lua" / "enqueue.lua").is_file()
    assert (built / "relay" / "runtime.py").is_file()


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["apns-sim"], "apns-relay apns-sim: this command belongs to the development kit"),
        (["demo"], "apns-relay demo: this command belongs to the development kit"),
        (["bench", "--quick"], "apns-relay bench: this command belongs to the development kit"),
        (["serve", "--dev"], "serve --dev: development mode needs the development kit"),
    ],
)
def test_kit_commands_say_so_when_the_kit_is_not_installed(
    argv: list[str], says: str, tmp_path: Path
) -> None:
    # An installation of the product alone, as in the image: relay/ on the path, and the
    # checkout's editable install (which maps both packages) out of the way.
    site = tmp_path / "site"
    shutil.copytree(
        REPO_ROOT / "relay", site / "relay", ignore=shutil.ignore_patterns("__pycache__")
    )
    script = (
        "import sys\n"
        "sys.meta_path[:] = [f for f in sys.meta_path"
        " if not str(getattr(f, '__module__', '')).startswith('__editable__')]\n"
        "from relay.cli import main\n"
        f"assert main.__code__.co_filename.startswith({str(site)!r})\n"
        f"raise SystemExit(main({argv!r}))\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(site)},
    )
    assert completed.returncode == 2, completed.stderr
    assert says in completed.stderr
    assert "Traceback" not in completed.stderr


def test_loading_settings_touches_no_redis_or_lua_code() -> None:
    script = (
        "import sys\n"
        "from relay.config.loading import load_settings\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('redis', 'hiredis')"
        " or m in ('relay.store.queue', 'relay.store.scripts', 'relay.store.connection',"
        " 'relay.store.routes')))\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert completed.stdout.strip() == "[]", completed.stdout


def kinds_of(refusal: type[Refusal]) -> set[type[Refusal]]:
    return {refusal}.union(*(kinds_of(kind) for kind in refusal.__subclasses__()))


def test_the_store_refuses_in_types_and_the_http_layer_gives_each_a_status() -> None:
    kinds = kinds_of(QueueRefusal) - {QueueRefusal}
    assert len(kinds) >= 7  # the queue's four, the spool's two, the replicas' one
    for kind in kinds:
        assert not hasattr(kind, "status"), kind
        assert 400 <= REFUSAL_STATUSES[kind.reason] < 600, kind
    assert len({kind.reason for kind in kinds}) == len(kinds)


def test_bad_input_is_refused_in_types_and_the_http_layer_gives_each_a_status() -> None:
    kinds = kinds_of(model.InvalidInput)
    assert {model.PayloadTooLarge, model.ExpiredOnArrival} <= kinds
    for kind in kinds:
        status, code = INVALID_INPUT_ANSWERS[kind]
        assert 400 <= status < 500, kind
        assert code
    assert len({status for status, _ in INVALID_INPUT_ANSWERS.values()}) == len(kinds)
    assert not hasattr(model.InvalidInput("field", "rule"), "status")
    # The payload rules speak in refusal types, not in HTTP statuses.
    for rules in (payload, fields):
        assert not [name for name in vars(rules) if name.endswith("_STATUS")]
