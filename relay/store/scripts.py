"""The Lua scripts (relay/store/lua/): loaded once, each with the names it shares with Python
prepended, and the call of one script with its KEYS and ARGV."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias, cast

from prometheus_client import Counter
from redis.exceptions import NoScriptError, ResponseError

from relay.core.model import FINAL_STATES, DeliveryState
from relay.store.errors import REDIS_UNAVAILABLE, vanished_as_unreachable
from relay.store.history import (
    COLLAPSE_IS_SERVICE,
    HISTORY_BUCKET_S,
    LAYOUT_VERSION,
    PUSH_TYPE_CODES,
    STATE_CODES,
)
from relay.store.keys import (
    DEAD,
    HISTORY,
    HISTORY_BUCKETS,
    NOTE,
    QUEUE,
    RECEIPTS,
    WAKE_CHANNEL,
)
from relay.store.queued import ABSENT, NOTE_STRINGS, QUEUED_LAYOUT, SAME_AS_SERVICE
from relay.store.records import CLAIM_FIELDS
from relay.telemetry.metrics import REDIS_SCRIPT_CALLS

if TYPE_CHECKING:
    from relay.store.connection import RedisClient

ScriptArg: TypeAlias = str | int | bytes


def _lua_string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _lua_prelude() -> str:
    """Names the scripts share with this module, so each is spelled once (here)."""
    constants = {
        "K_QUEUE": QUEUE,
        "K_NOTE": NOTE,
        "K_DEAD": DEAD,
        "K_HISTORY": HISTORY,
        "K_HISTORY_BUCKETS": HISTORY_BUCKETS,
        "K_RECEIPTS": RECEIPTS,
        "WAKE_CHANNEL": WAKE_CHANNEL,
    }
    lines = [f"local {name} = {_lua_string(value)}" for name, value in constants.items()]
    lines += [
        f"local HISTORY_BUCKET_MS = {HISTORY_BUCKET_S * 1000}",
        f"local HISTORY_LAYOUT = {LAYOUT_VERSION}",
        f"local HISTORY_COLLAPSE_IS_SERVICE = {COLLAPSE_IS_SERVICE}",
        f"local NOTE_LAYOUT = {QUEUED_LAYOUT}",
        f"local NOTE_ABSENT, NOTE_SAME_AS_SERVICE = {ABSENT}, {SAME_AS_SERVICE}",
    ]
    push_types = ", ".join(
        f"[{_lua_string(name)}] = {i}" for i, name in enumerate(PUSH_TYPE_CODES, 1)
    )
    codes = ", ".join(f"[{_lua_string(s.value)}] = {i}" for i, s in enumerate(STATE_CODES, 1))
    states = ", ".join(f"{s.name} = {_lua_string(s.value)}" for s in DeliveryState)
    finals = ", ".join(f"[{_lua_string(s.value)}] = true" for s in sorted(FINAL_STATES))
    claim_fields = ", ".join(_lua_string(name) for name in CLAIM_FIELDS)
    note_strings = ", ".join(_lua_string(name) for name in NOTE_STRINGS)
    state_of = ", ".join(f"[{i}] = {_lua_string(s.value)}" for i, s in enumerate(STATE_CODES, 1))
    push_type_of = ", ".join(f"[{i}] = {_lua_string(n)}" for i, n in enumerate(PUSH_TYPE_CODES, 1))
    lines += [
        f"local STATE = {{{states}}}",
        f"local FINAL = {{{finals}}}",
        f"local CLAIM_FIELDS = {{{claim_fields}}}",
        f"local HISTORY_STATE = {{{codes}}}",
        f"local HISTORY_PUSH_TYPE = {{{push_types}}}",
        f"local NOTE_STRINGS = {{{note_strings}}}",
        f"local STATE_OF_CODE = {{{state_of}}}",
        f"local PUSH_TYPE_OF_CODE = {{{push_type_of}}}",
    ]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True, slots=True)
class LuaScript:
    name: str
    source: str
    sha: str


LUA_DIR = Path(__file__).with_name("lua")


# Each script says how it meets Redis at maxmemory (its shebang's flags; Redis 7+, Valkey 7.2+).
# One that adds work (enqueue, a Live Activity registration) is refused whole before it runs, so a
# refusal has written nothing (a script is never rolled back). One that keeps delivery going
# (claim, settle, release, purge, a route's circuit) runs anyway: settling what was sent is what
# frees memory, and a settle refused at maxmemory is the deadlock of a full Redis.
REFUSED_AT_MAXMEMORY = "#!lua\n"
RUNS_AT_MAXMEMORY = "#!lua flags=allow-oom\n"


def load_script(name: str, shebang: str, *, shard_script: bool = True) -> LuaScript:
    """relay/store/lua/<name>.lua behind its shebang (REFUSED_AT_MAXMEMORY or RUNS_AT_MAXMEMORY);
    a shard script (one whose KEYS[1..4] are a shard's) gets the shared names and helpers
    prepended."""
    parts = (_lua_prelude(), (LUA_DIR / "shared.lua").read_text()) if shard_script else ()
    source = "".join((shebang, *parts, (LUA_DIR / f"{name}.lua").read_text()))
    return LuaScript(name, source, hashlib.sha1(source.encode()).hexdigest())


ENQUEUE = load_script("enqueue", REFUSED_AT_MAXMEMORY)
CLAIM, CLAIM_PARKED, SETTLE, RELEASE, CLEAR_DEVICE, TRIM_HISTORY = (
    load_script(name, RUNS_AT_MAXMEMORY)
    for name in ("claim", "claim_parked", "settle", "release", "clear_device", "trim_history")
)


@dataclass(frozen=True, slots=True)
class ScriptCall:
    script: LuaScript
    keys: Sequence[str]
    args: Sequence[ScriptArg]


@functools.cache
def _calls_of(script: str) -> Counter:
    """The script's call counter, looked up once (labels() costs ~2 µs; inc() a tenth of it)."""
    return REDIS_SCRIPT_CALLS.labels(script=script)


async def _execute(redis: RedisClient, calls: Sequence[ScriptCall]) -> list[Any]:
    # Counted as sent: with Valkey's commandstats (EVALSHA calls, not by script) they say which
    # script the store's time goes to (the benchmark's --profile reads both).
    for call in calls:
        _calls_of(call.script.name).inc()
    with vanished_as_unreachable():
        return await _send(redis, calls)


async def _send(redis: RedisClient, calls: Sequence[ScriptCall]) -> list[Any]:
    if len(calls) == 1:
        call = calls[0]
        try:
            return [
                await cast(Any, redis).evalsha(
                    call.script.sha, len(call.keys), *call.keys, *call.args
                )
            ]
        except ResponseError as error:
            # NOSCRIPT, or the script's own error: returned as a pipeline returns it. Anything
            # else (the server refusing, a cluster failing over) is raised here as before.
            if isinstance(error, NoScriptError) or is_script_error(error):
                return [error]
            raise
    pipe = redis.pipeline(transaction=False)
    for call in calls:
        # Spelled as a raw command: redis-py's cluster pipeline blocks its evalsha() helper
        # (it cannot load missing scripts itself), yet routes EVALSHA by its keys; run_scripts
        # answers NOSCRIPT.
        pipe.execute_command("EVALSHA", call.script.sha, len(call.keys), *call.keys, *call.args)
    return await pipe.execute(raise_on_error=False)


def is_script_error(error: object) -> bool:
    """Whether a reply is a script's own runtime error (a record it could not handle), rather
    than Redis refusing or failing the call."""
    return (
        isinstance(error, ResponseError)
        and not isinstance(error, NoScriptError)
        and "script" in str(error).lower()
    )


async def run_scripts(
    redis: RedisClient, calls: Sequence[ScriptCall], *, script_errors_as_replies: bool = False
) -> list[Any]:
    """Each call's reply, in one round trip unless the server lacks a script (restart, flush):
    then the scripts are loaded and only the calls that did not run are sent again. A script's
    runtime error is raised, or with `script_errors_as_replies` left in its call's place (one
    shard's error then does not cost the other shards' replies)."""
    results = await _execute(redis, calls)
    REDIS_UNAVAILABLE.cleared()
    missing = [i for i, result in enumerate(results) if isinstance(result, NoScriptError)]
    if missing:
        for script in {calls[i].script.name: calls[i].script for i in missing}.values():
            await cast(Any, redis).script_load(script.source)
        for i, result in zip(
            missing, await _execute(redis, [calls[i] for i in missing]), strict=True
        ):
            results[i] = result
    for result in results:
        kept = script_errors_as_replies and is_script_error(result)
        if isinstance(result, Exception) and not kept:
            raise result
    return results
