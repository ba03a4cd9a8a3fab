"""Settings shared by the CLI, the worker node and the producer API.

Every default is written once, as a field of :class:`Settings` (read back through
:data:`DEFAULTS`, e.g. by the CLI's help texts). The ``TASKQ_*`` environment is read only
here: :meth:`Settings.from_env` (``TASKQ_URL``, ``TASKQ_QUEUE``, ``TASKQ_PROCS``,
``TASKQ_BATCH``, ``TASKQ_LEASE``, ``TASKQ_RESULT_TTL``, ``TASKQ_SECRET``, ``TASKQ_METRICS``,
``TASKQ_WAIT_REPLICAS``)
and the small
readers below (:func:`env_url`, :func:`env_queue`, :func:`env_redis_server`) for the
modules that need one variable. Explicit arguments and CLI options win over the env.
Durations are float seconds here; they are converted at the Redis boundary.

Redis URLs are checked here too (:func:`validate_url`), and the two schemes redis-py has
no URL for, ``redis+cluster://`` and ``redis+sentinel://`` (and their ``rediss+``
forms), are parsed here only (:func:`parse_target`).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from taskq.cpus import available_cpus
from taskq.errors import ConfigError

DEFAULT_URL = "redis://localhost:6379/0"
DEFAULT_QUEUE = "default"


def _env(name: str) -> str | None:
    """A TASKQ_* variable; unset and empty are the same (``TASKQ_URL= cmd``)."""
    return os.environ.get(name) or None


def _env_number(name: str, cast: Callable[[str], int | float]) -> int | float | None:
    raw = _env(name)
    if raw is None:
        return None
    try:
        return cast(raw)
    except ValueError:
        kind = "whole number" if cast is int else "number"
        raise ConfigError(f"{name}={raw!r} is not a {kind}") from None


def env_url() -> str | None:
    """``TASKQ_URL``, or None: the caller then goes local (or uses its own default)."""
    return _env("TASKQ_URL")


def env_queues() -> tuple[str, ...] | None:
    """``TASKQ_QUEUE`` as a tuple (comma-separated), or None when unset."""
    raw = _env("TASKQ_QUEUE")
    queues = tuple(q for q in raw.split(",") if q) if raw else ()
    return queues or None


def env_queue() -> str:
    """The one queue of a producer made without one: the first of ``TASKQ_QUEUE``."""
    queues = env_queues()
    return queues[0] if queues else DEFAULT_QUEUE


def env_redis_server() -> str | None:
    """``TASKQ_REDIS_SERVER``: the redis-server binary local mode must use, if set."""
    return _env("TASKQ_REDIS_SERVER")


@dataclass(frozen=True)
class Settings:
    """Everything a node or a producer needs to know, in one immutable value."""

    url: str = DEFAULT_URL
    queues: tuple[str, ...] = (DEFAULT_QUEUE,)
    procs: int = field(default_factory=available_cpus)
    """Pool processes; the default is what this process may use (cgroup quota, affinity)."""
    """Pool processes of a node (default: the CPU count)."""
    claim_size: int = 256
    """Most entries one claim (one XREADGROUP) takes; ``--batch`` / ``TASKQ_BATCH``."""
    lease: float = 30.0
    """Seconds a claimed task stays owned without a renewal before other nodes reclaim it."""
    result_ttl: float = 24 * 3600.0
    """Seconds a task's result stays readable in Redis."""
    max_deliveries: int = 5
    """Deliveries after which a task that keeps losing its node is dead-lettered."""
    shutdown_timeout: float = 30.0
    """Seconds a graceful shutdown waits for running tasks."""
    max_tasks_per_child: int | None = None
    max_memory_per_child: int | None = None
    """Bytes of resident memory after which a pool process is replaced."""
    hard_timeout_grace: float = 5.0
    """Seconds past a task's time limit before its process is killed."""
    max_message_bytes: int = 16 * 1024 * 1024
    secret: bytes | None = None
    """The shared secret (``TASKQ_SECRET``): at least 32 bytes, see :func:`check_secret`."""
    require_signed: bool = False
    """A node dead-letters every unsigned entry (``--require-signed`` / ``TASKQ_REQUIRE_SIGNED=1``)."""
    wait_replicas: int = 0
    """Replicas that must acknowledge an enqueue / a completion (``WAIT N``) before it
    counts as done; 0: don't wait (``--wait-replicas`` / ``TASKQ_WAIT_REPLICAS``)."""
    metrics: tuple[str, int] | None = None
    """(host, port) a node serves /metrics and /healthz on; None: off. ``--metrics
    [HOST:]PORT`` / ``TASKQ_METRICS`` (see :func:`parse_metrics`); port 0 picks a free one."""

    def __post_init__(self) -> None:
        if self.procs < 1:
            raise ConfigError(f"procs must be at least 1, got {self.procs}")
        if self.claim_size < 1:
            raise ConfigError(f"the claim size (--batch) must be at least 1, got {self.claim_size}")
        if self.lease < 1:
            raise ConfigError(f"lease must be at least 1 second, got {self.lease}")
        if self.max_deliveries < 1:
            raise ConfigError(f"max_deliveries must be at least 1, got {self.max_deliveries}")
        if self.hard_timeout_grace < 0:
            raise ConfigError(f"hard_timeout_grace must be >= 0, got {self.hard_timeout_grace}")
        if not self.queues:
            raise ConfigError("at least one queue is needed")
        if self.wait_replicas < 0:
            raise ConfigError(f"--wait-replicas must be >= 0, got {self.wait_replicas}")
        for q in self.queues:
            validate_queue_name(q)
        validate_url(self.url)
        if self.secret is not None:
            check_secret(self.secret)
        if self.require_signed and self.secret is None:
            raise ConfigError("--require-signed needs the shared secret TASKQ_SECRET")
        if self.metrics is not None and not 0 <= self.metrics[1] <= 65535:
            raise ConfigError(f"metrics port must be 0-65535, got {self.metrics[1]}")

    @classmethod
    def from_env(cls, **overrides: Any) -> Settings:
        """The field defaults, then ``TASKQ_*`` variables, then the non-None ``overrides``."""
        secret = _env("TASKQ_SECRET")
        metrics = _env("TASKQ_METRICS")
        found: dict[str, Any] = {
            "url": env_url(),
            "queues": env_queues(),
            "procs": _env_number("TASKQ_PROCS", int),
            "claim_size": _env_number("TASKQ_BATCH", int),
            "lease": _env_number("TASKQ_LEASE", float),
            "result_ttl": _env_number("TASKQ_RESULT_TTL", float),
            "wait_replicas": _env_number("TASKQ_WAIT_REPLICAS", int),
            "secret": secret.encode() if secret else None,
            "require_signed": _env("TASKQ_REQUIRE_SIGNED") not in (None, "0", "false", "no"),
            "metrics": parse_metrics(metrics, "TASKQ_METRICS") if metrics else None,
        }
        found.update((k, v) for k, v in overrides.items() if v is not None)  # None: not given
        return cls(**{k: v for k, v in found.items() if v is not None})

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes)


MIN_SECRET_BYTES = 32
_PLACEHOLDER_SECRETS = frozenset({b"change-me"})


def check_secret(secret: bytes) -> bytes:
    """Refuse a guessable shared secret (shorter than 32 bytes, or the placeholder that
    deploy/taskq.env ships): whoever guesses it runs code on every worker."""
    how = 'make one with: python -c "import secrets; print(secrets.token_urlsafe(32))"'
    if secret in _PLACEHOLDER_SECRETS:
        raise ConfigError(f"TASKQ_SECRET is the shipped placeholder {secret.decode()!r}: {how}")
    if len(secret) < MIN_SECRET_BYTES:
        raise ConfigError(f"TASKQ_SECRET is {len(secret)} bytes, at least {MIN_SECRET_BYTES} "
                          f"are needed: {how}")
    return secret


@functools.lru_cache(maxsize=32)
def derive_key(secret: bytes, purpose: str) -> bytes:
    """The MAC key for one ``purpose`` (``messages``, ``results``): HMAC-SHA256 of a
    context string under the secret, so one key never signs two kinds of data and the
    secret itself is never used raw."""
    return hmac.new(secret, b"taskq v2 " + purpose.encode() + b" key", hashlib.sha256).digest()


def validate_queue_name(name: str) -> str:
    """Queue names become part of Redis keys and hash tags: keep them plain."""
    if not name or len(name) > 100 or any(c in name for c in "{}: \t\r\n"):
        raise ConfigError(
            f"invalid queue name {name!r}: use 1-100 characters without spaces, ':', '{{' or '}}'"
        )
    return name


def parse_metrics(text: str, what: str = "--metrics") -> tuple[str, int]:
    """``[HOST:]PORT`` as (host, port); a bare port binds 127.0.0.1, never every interface
    (a metrics port open to the world by default is a complaint against other exporters)."""
    host, sep, port = text.strip().rpartition(":")
    host = host.strip("[]") if sep else "127.0.0.1"  # [::1]:9808
    try:
        number = int(port)
    except ValueError:
        number = -1
    if not host or not 0 <= number <= 65535:
        raise ConfigError(f"{what}={text!r} is not [HOST:]PORT (e.g. 9808 or 0.0.0.0:9808)")
    return host, number


_URL_FORMS = ("redis://[[user]:password@]host[:port][/db], rediss://…, unix://path[?db=N], "
              "redis+cluster://host:port[,host:port…]/ or "
              "redis+sentinel://[[user]:password@]host:port[,host:port…]/MASTER[/DB]")
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
_URL_STRING_OPTIONS = frozenset({
    "username", "password", "client_name", "protocol", "ssl_cert_reqs", "ssl_ca_certs",
    "ssl_ca_path", "ssl_certfile", "ssl_keyfile", "ssl_password", "ssl_min_version",
})
"""Query options redis-py passes on as strings (the typed ones it parses itself)."""


def redact_url(url: str) -> str:
    """``url`` with its password masked (``redis://user:***@host``, ``?password=***``):
    for every message and log line that names a URL."""
    def mask(m: re.Match[str]) -> str:
        user, sep, _ = m[2].partition(":")
        return f"{m[1]}{user}:***@" if sep else f"{m[1]}***@"  # a lone userinfo is a password

    url = re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://)([^/?#]*)@", mask, url)
    return re.sub(r"([?&](?:sentinel_)?password=)[^&#]*", r"\1***", url)


def validate_url(url: str) -> str:
    """Refuse every URL redis-py would read differently from what it says (a db that is
    not a number is silently db 0 there, ``/1/2`` is db 12, an unknown option or a
    ``#fragment`` is ignored): a wrong URL must never reach some other database."""
    def invalid(why: str) -> ConfigError:
        return ConfigError(f"invalid Redis URL {redact_url(url)!r}: {why} (expected {_URL_FORMS})")

    if url.partition("://")[0] in (*CLUSTER_SCHEMES, *SENTINEL_SCHEMES):
        parse_target(url)
        return url
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise invalid(str(exc)) from None
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise invalid(f"unknown scheme {parts.scheme + ':' if parts.scheme else 'none'}")
    if parts.fragment or url.endswith("#"):
        raise invalid("a #fragment means nothing to Redis")
    if parts.scheme == "unix":
        if not parts.path:
            raise invalid("no socket path")
    else:
        if not parts.hostname and port is not None:
            raise invalid("no host")
        db = parts.path[1:] if parts.path.startswith("/") else parts.path
        if db and not db.isdigit():
            raise invalid(f"the database {db!r} is not a number")
    _query_options(parts.query, invalid)
    return url


def _query_options(query: str, invalid: Callable[[str], ConfigError],
                   extra: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The ``?name=value`` options, parsed as redis-py parses them (unknown: refused)."""
    options: dict[str, Any] = {}
    if not query:  # the usual URL: `import taskq` (DEFAULTS) needs no redis-py
        return options
    from redis.connection import URL_QUERY_ARGUMENT_PARSERS

    for name, value in parse_qsl(query, keep_blank_values=True):
        parser: Any = URL_QUERY_ARGUMENT_PARSERS.get(name)
        if parser is not None:
            try:
                options[name] = parser(value)
            except (ValueError, TypeError):
                raise invalid(f"option {name}={value!r} is not valid") from None
        elif name in _URL_STRING_OPTIONS or name in extra:
            options[name] = value
        else:
            raise invalid(f"unknown option {name!r}")
    return options


@dataclass(frozen=True)
class Target:
    """A ``redis+cluster://`` or ``redis+sentinel://`` URL, parsed: what
    :func:`taskq.broker.connect` needs to build a RedisCluster or a Sentinel client."""

    kind: str
    """``cluster`` or ``sentinel``."""
    hosts: tuple[tuple[str, int], ...]
    """Startup nodes (cluster) or the Sentinels (sentinel)."""
    ssl: bool = False
    username: str | None = None
    password: str | None = None
    master: str | None = None
    """The master name Sentinel knows (sentinel only)."""
    db: int = 0
    options: dict[str, Any] = field(default_factory=dict)
    """Query options for the data connections (``sentinel_password`` is taken out)."""
    sentinel_password: str | None = None


_DEFAULT_PORTS = {"cluster": 6379, "sentinel": 26379}


def _hosts(text: str, kind: str, invalid: Callable[[str], ConfigError]) -> tuple[tuple[str, int], ...]:
    hosts = []
    for item in text.split(","):
        m = re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[^:\[\]]+)(?::(\d{1,5}))?", item.strip())
        if m is None:
            raise invalid(f"{item.strip()!r} is not host[:port]")
        port = int(m[2]) if m[2] else _DEFAULT_PORTS[kind]
        if not 0 < port <= 65535:
            raise invalid(f"port {port} is out of range")
        hosts.append((m[1].strip("[]"), port))
    return tuple(hosts)


def parse_target(url: str) -> Target:
    """Parse a cluster or Sentinel URL (the one place they are read), or ConfigError.

    ``redis+cluster://[[user]:password@]h1:p1[,h2:p2…][/]`` (a cluster has db 0 only);
    ``redis+sentinel://[[user]:password@]h1:p1[,h2:p2…]/MASTER[/DB]``: the credentials
    are the master's; ``?sentinel_password=`` is the Sentinels' own, if they have one.
    """
    def invalid(why: str) -> ConfigError:
        return ConfigError(f"invalid Redis URL {redact_url(url)!r}: {why} (expected {_URL_FORMS})")

    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in (*CLUSTER_SCHEMES, *SENTINEL_SCHEMES):
        raise invalid(f"unknown scheme {scheme + ':' if sep else 'none'}")
    kind = "cluster" if scheme in CLUSTER_SCHEMES else "sentinel"
    if "#" in rest:
        raise invalid("a #fragment means nothing to Redis")
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, at, hostlist = netloc.rpartition("@")
    if not hostlist:
        raise invalid("no host")
    username = password = None
    if at:
        user, colon, pw = userinfo.partition(":")
        username, password = (unquote(user) or None, unquote(pw)) if colon else (None, unquote(user))
    hosts = _hosts(hostlist, kind, invalid)
    options = _query_options(query, invalid, frozenset({"sentinel_password"}))
    sentinel_password = options.pop("sentinel_password", None)
    if kind == "cluster":
        if sentinel_password is not None:
            raise invalid("sentinel_password is for redis+sentinel:// URLs")
        if path not in ("", "0"):
            raise invalid("a Redis Cluster has database 0 only: end the URL with / or /0")
        return Target(kind, hosts, scheme.startswith("rediss"), username, password,
                      options=options)
    master, _, db = path.strip("/").partition("/")
    if not master:
        raise invalid("no master name (…/MASTER_NAME[/DB])")
    if db and not db.isdigit():
        raise invalid(f"the database {db!r} is not a number")
    return Target(kind, hosts, scheme.startswith("rediss"), username, password, master,
                  int(db or 0), options, sentinel_password)


DEFAULTS = Settings()
"""The defaults, for texts that quote them (``--help``); never read the env."""
