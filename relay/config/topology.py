"""The Redis topology a URL names (standalone, Sentinel, Cluster), parsed without touching Redis:
settings validate `redis.url` with it, and relay.store.connection builds clients from it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, TypeAlias
from urllib.parse import unquote, urlsplit

from pydantic import SecretStr

STANDALONE_SCHEMES = frozenset({"redis", "rediss", "unix"})
SENTINEL_SCHEMES = {"redis+sentinel": False, "rediss+sentinel": True}  # scheme -> TLS
CLUSTER_SCHEMES = {"redis+cluster": False, "rediss+cluster": True}
DEFAULT_SENTINEL_PORT = 26379
DEFAULT_REDIS_PORT = 6379

Address: TypeAlias = tuple[str, int]


@dataclass(frozen=True, slots=True)
class Standalone:
    url: str


@dataclass(frozen=True, slots=True)
class SentinelSet:
    sentinels: tuple[Address, ...]
    service_name: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False


@dataclass(frozen=True, slots=True)
class ClusterSeeds:
    nodes: tuple[Address, ...]
    username: str | None = None
    password: str | None = None
    tls: bool = False


Topology: TypeAlias = Standalone | SentinelSet | ClusterSeeds


def parse_address(text: str, *, default_port: int | None) -> Address:
    """The (host, port) of "host:port" or "[v6]:port"; the port may be left out if defaulted."""
    host, colon, port = text.strip().rpartition(":")
    if not colon or "]" in port:
        host, port = text.strip(), ""
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host:
        raise ValueError(f"address {text!r}: must be host:port")
    if not port:
        if default_port is None:
            raise ValueError(f"address {text!r}: must be host:port (the port is missing)")
        return host, default_port
    if not port.isdigit() or not 0 < int(port) <= 65535:
        raise ValueError(f"address {text!r}: the port must be a number from 1 to 65535")
    return host, int(port)


def _join(addresses: Sequence[str]) -> str:
    return ",".join(address.strip() for address in addresses)


def sentinel_url(sentinels: Sequence[str], service_name: str, db: int = 0) -> str:
    return f"redis+sentinel://{_join(sentinels)}/{service_name}/{db}"


def cluster_url(nodes: Sequence[str]) -> str:
    return f"redis+cluster://{_join(nodes)}"


def _credentials(netloc: str) -> tuple[str | None, str | None, str]:
    """(username, password, host list) of a URL's authority; "" user means none (":pw@")."""
    userinfo, at, hosts = netloc.rpartition("@")
    if not at:
        return None, None, netloc
    user, colon, password = userinfo.partition(":")
    return (unquote(user) or None, unquote(password) if colon else None, hosts)


def parse_redis_url(url: str) -> Topology:
    """The topology a URL names. Errors describe the part at fault, never the URL (a password)."""
    scheme, _, rest = url.partition("://")
    scheme = scheme.lower() if rest else ""
    if "@" in rest.partition("/")[2].partition("?")[0]:
        # user:pa/ss@host: the authority would end at the '/', and its errors quote part of it
        raise ValueError(
            "the URL's user name or password holds an unescaped '/': percent-encode it ('/' is %2F)"
        )
    if scheme in STANDALONE_SCHEMES:
        try:  # redis-py would fail on it later, at the first connection, quoting the URL
            _ = urlsplit(url).port
        except ValueError:
            raise ValueError("the URL's port must be a number from 1 to 65535") from None
        return Standalone(url)
    if scheme not in SENTINEL_SCHEMES and scheme not in CLUSTER_SCHEMES:
        allowed = sorted({*STANDALONE_SCHEMES, *SENTINEL_SCHEMES, *CLUSTER_SCHEMES})
        raise ValueError(f"the URL scheme must be one of {', '.join(allowed)} (got {scheme!r})")
    parts = urlsplit(url)
    username, password, hosts = _credentials(parts.netloc)
    if scheme in CLUSTER_SCHEMES:
        if parts.path.strip("/"):
            raise ValueError("a redis+cluster:// URL has no path: a Cluster has only database 0")
        nodes = tuple(
            parse_address(a, default_port=DEFAULT_REDIS_PORT) for a in hosts.split(",") if a
        )
        if not nodes:
            raise ValueError("a redis+cluster:// URL needs at least one host:port seed node")
        return ClusterSeeds(nodes, username, password, CLUSTER_SCHEMES[scheme])
    sentinels = tuple(
        parse_address(a, default_port=DEFAULT_SENTINEL_PORT) for a in hosts.split(",") if a
    )
    if not sentinels:
        raise ValueError("a redis+sentinel:// URL needs at least one host:port Sentinel")
    service_name, _, db = parts.path.strip("/").partition("/")
    if not service_name:
        raise ValueError("a redis+sentinel:// URL needs the service name: .../<service_name>[/db]")
    if db and not db.isdigit():
        raise ValueError(f"the database after the service name must be a number (got {db!r})")
    return SentinelSet(
        sentinels, service_name, int(db or 0), username, password, SENTINEL_SCHEMES[scheme]
    )


class RedisLocation(Protocol):
    """What topology() reads of the settings' redis section (relay.config.schema.RedisSettings,
    which validates its URL with this module's parsers: named by shape, so no cycle)."""

    @property
    def url(self) -> str | None: ...
    @property
    def password(self) -> SecretStr | None: ...


def topology(settings: RedisLocation) -> Topology:
    """The settings' topology; `password` applies when the URL carries none."""
    if settings.url is None:
        raise ValueError("redis.url: not set (development mode fills in the embedded server)")
    found = parse_redis_url(settings.url)
    if settings.password is None or isinstance(found, Standalone) or found.password is not None:
        return found
    return _with_password(found, settings.password.get_secret_value())


def _with_password(found: SentinelSet | ClusterSeeds, password: str) -> Topology:
    if isinstance(found, SentinelSet):
        return SentinelSet(
            found.sentinels, found.service_name, found.db, found.username, password, found.tls
        )
    return ClusterSeeds(found.nodes, found.username, password, found.tls)
