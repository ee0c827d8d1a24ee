"""Every option of every `apns-relay` command explains itself in --help; `push` by `--device`."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from relay_harness import API_TOKEN, running_relay

from relay.cli import COMMANDS, build_parser


def parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """`parser` and every sub-command's parser under it, however deep."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from parsers(sub)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_option_has_a_help_line(command: str) -> None:
    parser, _ = build_parser(command)
    missing = [
        f"{each.prog} {'/'.join(action.option_strings) or action.dest}"
        for each in parsers(parser)
        for action in each._actions
        if not isinstance(action, argparse._SubParsersAction)
        and (not action.help or action.help == argparse.SUPPRESS)
    ]
    assert missing == []


def test_the_push_command_names_its_device_and_its_environment() -> None:
    parser, _ = build_parser("push")
    push = next(p for p in parsers(parser) if p.prog.endswith(" push"))
    args = push.parse_args(["--device", "ab" * 32, "--service-id", "s", "--action", "a"])
    old = push.parse_args(["--token", "ab" * 32, "--service-id", "s", "--action", "a"])
    assert args.device == old.device == "ab" * 32
    text = push.format_help()
    assert "RELAY_URL" in text
    assert "RELAY_API_TOKEN" in text
    top = parser.format_help()
    assert "RELAY_URL" in top
    assert "GMS" in top


async def test_push_delivers_by_device_and_by_its_old_name(redis_url: str, state_dir: Path) -> None:
    """The README's `push` line against a real relay and simulator, the relay named only by the
    environment: both spellings deliver, and the process says so with exit 0."""
    async with running_relay(redis_url, state_dir) as relay:
        devices = await relay.device_tokens(2)
        env = {**os.environ, "RELAY_URL": relay.url, "RELAY_API_TOKEN": API_TOKEN}

        def push(flag: str, device: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "relay.cli", "push", flag, device,
                 "--service-id", "3SQI3S31693JL9L3R00506T40C000U73", "--action", "wait-for-agent",
                 "--state-dir", str(state_dir / "none")],
                capture_output=True, text=True, env=env, cwd=state_dir, timeout=60,
            )  # fmt: skip

        results = await asyncio.gather(
            asyncio.to_thread(push, "--device", devices[0]),
            asyncio.to_thread(push, "--token", devices[1]),
        )
    for result in results:
        assert result.returncode == 0, result.stdout + result.stderr
        assert json.loads(result.stdout)["state"] == "delivered"
