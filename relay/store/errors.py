"""What an unreachable or failing Redis raises, and the outage reported once per process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import traceback
from collections.abc import Iterator
from pathlib import Path

import redis.asyncio
import structlog
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from relay.telemetry.logs import RepeatedCondition

# What an unreachable or failing Redis raises: redis-py's own errors are not OSErrors.
REDIS_ERRORS: tuple[type[Exception], ...] = (RedisError, OSError)
# One per process: an outage is logged as it starts, in periodic summaries and as it ends, not
# once per request that met it. Whoever catches REDIS_ERRORS reports it; a script that runs ends it.
# Its logger keeps the name it had before the store became a package.
REDIS_UNAVAILABLE = RepeatedCondition("redis_unavailable", structlog.get_logger("relay.queue"))

# Where a command that lost its connection fails with an error on None instead of a ConnectionError.
_CONNECTION_CODE = (
    str(Path(redis.asyncio.__file__).parent) + os.sep,
    str(Path(asyncio.__file__).parent) + os.sep,
)


def vanished_connection(error: Exception) -> bool:
    """Whether `error` is redis-py using a connection that went away under it, which means
    Redis unreachable and nothing more:
    - uvloop's RuntimeError on writing to a closed transport ("unable to perform operation on
      <TCPTransport closed=True ...>; the handler is closed"), where asyncio's own loop raises
      nothing and the next read fails with a ConnectionError;
    - an AttributeError or TypeError on None raised inside redis-py's connection or asyncio's
      streams: a connection another task disconnected mid-command (the cluster client
      disconnects every connection of a node it drops after a failover, in use or not), or a
      transport the peer reset (redis/redis-py#4287)."""
    text = str(error)
    if isinstance(error, RuntimeError):
        return "unable to perform operation" in text and "closed=True" in text
    if isinstance(error, AttributeError | TypeError) and "'NoneType'" in text:
        frames = traceback.extract_tb(error.__traceback__)
        return bool(frames) and frames[-1].filename.startswith(_CONNECTION_CODE)
    return False


@contextlib.contextmanager
def vanished_as_unreachable() -> Iterator[None]:
    """Raise a vanished connection's error (vanished_connection) as the ConnectionError it
    means, so that whoever handles Redis being unreachable handles it too."""
    try:
        yield
    except (RuntimeError, AttributeError, TypeError) as error:
        if not vanished_connection(error):
            raise
        raise RedisConnectionError(f"connection lost mid-command: {error!r}") from error
