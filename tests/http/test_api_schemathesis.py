"""The OpenAPI document against the running relay: the same routes, and schemathesis finds no
5xx, no undocumented status and no 4xx that is not problem+json."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest
from relay_harness import API_TOKEN, running_relay

from relay.http.app import create_app, openapi_document

# A whole relay under generated requests: seconds (`make test-fast` leaves it out).
pytestmark = pytest.mark.slow

# Bounded so the file stays well under 40 s on two cores; the seed makes a failure repeatable
# (`st run ... --seed` with the same options reproduces it).
MAX_EXAMPLES = 25
SEED = 20261127
RUN_TIMEOUT_S = 120


async def test_openapi_documents_exactly_the_routes_served(redis_url: str, state_dir: Path) -> None:
    async with running_relay(redis_url, state_dir) as relay:
        application = create_app(relay.state)
        served = {
            (route.method.lower(), route.resource.canonical)
            for route in application.router.routes()
            if route.resource is not None and route.method != "HEAD"
        }
        status, document, _ = await relay.call("GET", "/openapi.json")
        assert status == 200
        assert document == openapi_document()
        documented = {
            (method, path) for path, methods in document["paths"].items() for method in methods
        }
        assert served == documented
        for path, methods in document["paths"].items():
            for method, operation in methods.items():
                assert operation["responses"], (method, path)
                errors = [code for code in operation["responses"] if code.startswith("4")]
                for code in errors:
                    content = operation["responses"][code]["content"]
                    assert list(content) == ["application/problem+json"], (method, path, code)


async def test_schemathesis_finds_no_server_error_and_only_documented_problems(
    redis_url: str, state_dir: Path
) -> None:
    # Live Activities on, so their registration routes are exercised past "not configured".
    async with running_relay(redis_url, state_dir, app={"live_activity": {}}) as relay:
        # The CLI blocks on its own requests; as a child process it leaves this loop free to
        # serve them.
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "schemathesis.cli",
            "run",
            f"{relay.url}/openapi.json",
            "--header",
            f"Authorization: Bearer {API_TOKEN}",
            "--phases",
            "examples,coverage,fuzzing,stateful",
            # Every check but "schema-valid input is accepted": rules no schema can say
            # (expired on arrival, ttl or expires_at, a payload too large once built) refuse
            # some schema-valid bodies, with a problem that names the rule.
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance",
            "--max-examples",
            str(MAX_EXAMPLES),
            "--seed",
            str(SEED),
            "--workers",
            "1",
            "--request-timeout",
            "10",
            "--suppress-health-check",
            "all",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=state_dir,
            env={**os.environ, "NO_COLOR": "1"},
        )
        output, _ = await asyncio.wait_for(process.communicate(), RUN_TIMEOUT_S)
    report = output.decode(errors="replace")
    assert process.returncode == 0, report
    assert "Tested: 16" in report, report
    assert " passed" in report, report
