"""The Lua scripts (relay/store/lua/): one Redis Functions library holding each as a function
beside the names it shares with Python, loaded once per server; and the call of one script with
its KEYS and ARGV (FCALL)."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias, cast

import structlog
from redis.exceptions import OutOfMemoryError, ResponseError

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
from relay.telemetry.metrics import REDIS_LIBRARY_REFUSED, REDIS_SCRIPT_CALLS, series

if TYPE_CHECKING:
    from relay.store.connection import RedisClient

log = structlog.get_logger("relay.queue")

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


LUA_DIR = Path(__file__).with_name("lua")

# How each script meets Redis at maxmemory (its function's flags; Redis 7+, Valkey 7.2+). One that
# adds work (enqueue, a Live Activity registration, a receipt) is refused whole before it runs, so
# a refusal has written nothing (a script is never rolled back). One that keeps delivery going
# (claim, settle, release, purge, a route's circuit) runs anyway: settling what was sent is what
# frees memory, and a settle refused at maxmemory is the deadlock of a full Redis.
RUNS_AT_MAXMEMORY = {
    "enqueue": False,
    "activity_stamp": False,
    "activity_register": False,
    "activity_bind": False,
    "receipt": False,
    "claim": True,
    "claim_parked": True,
    "settle": True,
    "release": True,
    "clear_device": True,
    "trim_history": True,
    "route_write": True,
}

ALLOW_OOM = "allow-oom"

# Each call sets the keys and arguments the library's helpers read, and starts its own counts (a
# call that failed half-way leaves none behind for the next).
_BIND = """
local function bind(keys, args)
  KEYS, ARGV, DUE, LEASE, HEADS, STATS = keys, args, keys[1], keys[2], keys[3], keys[4]
  counts, buckets_touched = {}, {}
end
"""


@dataclass(frozen=True, slots=True)
class LuaScript:
    """One script: `function` is what FCALL names, in `library`."""

    name: str
    function: str
    library: Library


@dataclass(frozen=True, slots=True)
class Library:
    """Every script as a function of one Redis Functions library. Its top level (the shared names
    and helpers) runs once, when it is loaded, not on every call as an EVALSHA script's would
    (~20 µs of Valkey's CPU a call, bench/results/store_cost.md). Its name and its functions'
    carry a digest of the source, so two relay versions (a rolling upgrade) each call their own
    and never replace the other's."""

    name: str
    digest: str
    top: str
    bodies: tuple[tuple[str, str], ...]

    @property
    def source(self) -> str:
        flags = {name: f"'{ALLOW_OOM}'" if runs else "" for name, runs in RUNS_AT_MAXMEMORY.items()}
        functions = [
            f"redis.register_function{{function_name = '{name}_{self.digest}',"
            f" flags = {{{flags[name]}}},"
            f" callback = function(keys, args)\nbind(keys, args)\n{body}\nend}}\n"
            for name, body in self.bodies
        ]
        return "".join((f"#!lua name={self.name}\n", self.top, *functions))

    def script(self, name: str) -> LuaScript:
        return LuaScript(name, f"{name}_{self.digest}", self)

    @functools.cache  # noqa: B019 (the libraries live as long as the process)
    def eval_source(self, name: str) -> str:
        """Script `name` as one EVAL takes it (flags in its shebang), for a server that refuses
        to load the library; built only then, once per script."""
        shebang = f"#!lua flags={ALLOW_OOM}\n" if RUNS_AT_MAXMEMORY[name] else "#!lua\n"
        body = dict(self.bodies)[name]
        return "".join(
            (shebang, "local keys, args = KEYS, ARGV\n", self.top, "bind(keys, args)\n", body)
        )


def build_library(bodies: dict[str, str] | None = None) -> Library:
    """The library of relay/store/lua/*.lua (or of `bodies`, name -> a script's text, for the
    scripts it names): each script's text becomes the body of its function."""
    texts = {name: (LUA_DIR / f"{name}.lua").read_text() for name in RUNS_AT_MAXMEMORY}
    texts.update(bodies or {})
    top = "".join(
        (
            _lua_prelude(),
            "local KEYS, ARGV, DUE, LEASE, HEADS, STATS\n",
            (LUA_DIR / "shared.lua").read_text(),
            _BIND,
        )
    )
    digest = hashlib.sha1(
        "".join([top, *(f"{n}{RUNS_AT_MAXMEMORY[n]}{t}" for n, t in texts.items())]).encode()
    ).hexdigest()[:16]
    return Library(f"relay_{digest}", digest, top, tuple(texts.items()))


LIBRARY = build_library()
ENQUEUE, CLAIM, CLAIM_PARKED, SETTLE, RELEASE, CLEAR_DEVICE, TRIM_HISTORY = (
    LIBRARY.script(name)
    for name in (
        "enqueue",
        "claim",
        "claim_parked",
        "settle",
        "release",
        "clear_device",
        "trim_history",
    )
)


@dataclass(frozen=True, slots=True)
class ScriptCall:
    script: LuaScript
    keys: Sequence[str]
    args: Sequence[ScriptArg]


async def _execute(
    redis: RedisClient, calls: Sequence[ScriptCall], *, as_eval: bool = False
) -> list[Any]:
    # Counted as sent: with Valkey's commandstats (FCALL calls, not by script) they say which
    # script the store's time goes to (the benchmark's --profile reads both).
    for call in calls:
        series(REDIS_SCRIPT_CALLS, call.script.name).inc()
    commands = [_command(call, as_eval) for call in calls]
    with vanished_as_unreachable():
        if len(commands) == 1:
            try:
                return [await redis.execute_command(*commands[0])]
            except ResponseError as error:
                # The library missing, or the script's own error: returned as a pipeline
                # returns it. Anything else (the server refusing, a cluster failing over) is
                # raised here as before.
                if is_library_missing(error) or is_script_error(error):
                    return [error]
                raise
        pipe = redis.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        return await pipe.execute(raise_on_error=False)


def _command(call: ScriptCall, as_eval: bool) -> tuple[ScriptArg, ...]:
    script = call.script
    head = (
        ("EVAL", script.library.eval_source(script.name)) if as_eval else ("FCALL", script.function)
    )
    return (*head, len(call.keys), *call.keys, *call.args)


def is_library_missing(error: object) -> bool:
    """Whether a reply says the server lacks the function (a restart without persistence,
    FUNCTION FLUSH, a Cluster primary that never had the library)."""
    return isinstance(error, ResponseError) and str(error).startswith("Function not found")


def is_script_error(error: object) -> bool:
    """Whether a reply is a script's own runtime error (a record it could not handle), rather
    than Redis refusing or failing the call."""
    return (
        isinstance(error, ResponseError)
        and not is_library_missing(error)
        and "script" in str(error).lower()
    )


async def run_scripts(
    redis: RedisClient, calls: Sequence[ScriptCall], *, script_errors_as_replies: bool = False
) -> list[Any]:
    """Each call's reply, in one round trip unless the server lacks the library (restart, flush):
    then it is loaded (on every primary of a Cluster) and only the calls that did not run are
    sent again. A script's runtime error is raised, or with `script_errors_as_replies` left in
    its call's place (one shard's error then does not cost the other shards' replies)."""
    results = await _execute(redis, calls)
    REDIS_UNAVAILABLE.cleared()
    missing = [i for i, result in enumerate(results) if is_library_missing(result)]
    if missing:
        again = [calls[i] for i in missing]
        for i, result in zip(missing, await _load_and_send(redis, again), strict=True):
            results[i] = result
    for result in results:
        kept = script_errors_as_replies and is_script_error(result)
        if isinstance(result, Exception) and not kept:
            raise result
    return results


async def _load_and_send(redis: RedisClient, calls: Sequence[ScriptCall]) -> list[Any]:
    try:
        for library in {call.script.library for call in calls}:
            await cast(Any, redis).function_load(library.source, replace=True)
    except OutOfMemoryError:
        # Redis refuses FUNCTION LOAD at maxmemory (a new relay version started while Redis is
        # full), yet takes EVAL: the calls run as scripts, so what drains a full Redis still runs.
        REDIS_LIBRARY_REFUSED.inc()
        log.warning("library_refused_at_maxmemory", library=calls[0].script.library.name)
        return await _execute(redis, calls, as_eval=True)
    return await _execute(redis, calls)
