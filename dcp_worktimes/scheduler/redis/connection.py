"""Reaching the server: the URL, its options, the client, and riding out lost connections.

URL::

    redis://[[USER]:PASSWORD@]HOST[:PORT][/DB][?OPTION=VALUE&...]
    rediss://...                                  (TLS)

Options: ``group`` (the namespace of this team's jobs: keys live under ``dcp:<group>:``; default
``default``), ``keep`` (how long a finished job stays before Redis expires it: ``7d`` by default,
``forever`` to keep until ``dcp-worker jobs --delete``), ``retry`` (how long a call rides out a lost
connection before it fails with ``RedisUnavailable``; ``5m``), ``timeout`` (socket timeout, ``10s``),
and for ``rediss://``: ``ssl_ca_certs`` (a CA bundle to trust), ``ssl_ca_path``, ``ssl_certfile`` and
``ssl_keyfile`` (a client certificate), ``ssl_cert_reqs`` (``required``/``optional``/``none``),
``ssl_check_hostname`` (``true``/``false``).

The password may be left out of the URL and given as ``$DCP_REDIS_PASSWORD`` instead (a URL on a
command line shows in ``ps``). It never appears in ``repr()``, a log line, an event or an error:
everything shows ``RedisTarget.shown``, the URL with the password replaced by ``***``.

>>> t = parse_redis_url("redis://team:s3cret@db.example:6380/2?group=physics")
>>> t.host, t.port, t.db, t.username, t.group, t.prefix
('db.example', 6380, 2, 'team', 'physics', 'dcp:physics:')
>>> t.shown
'redis://team:***@db.example:6380/2?group=physics'
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..base import SchedulerError, StoreUnavailable
from ..urls import redact_url

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Environment variable holding the password when the URL has none.
ENV_PASSWORD = "DCP_REDIS_PASSWORD"
DEFAULT_KEEP = 7 * 24 * 3600.0
DEFAULT_RETRY = 300.0
DEFAULT_TIMEOUT = 10.0
_GROUP = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_TLS_OPTIONS = ("ssl_ca_certs", "ssl_ca_path", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs", "ssl_check_hostname")
_OPTIONS = ("group", "keep", "retry", "timeout") + _TLS_OPTIONS
_FORM = "redis://[[user]:password@]host[:port][/db][?group=NAME]"


class RedisUnavailable(StoreUnavailable):
    """The Redis server could not be reached for longer than the URL's ``retry`` (or it refuses
    writes: out of memory). Nothing is wrong with the call: it may succeed later unchanged."""


@dataclass(frozen=True)
class RedisTarget:
    """A parsed ``redis://`` / ``rediss://`` URL."""

    host: str
    port: int
    db: int
    username: str | None
    password: str | None = field(repr=False)
    tls: bool
    group: str
    keep: float  # seconds; 0 = forever
    retry: float
    timeout: float
    tls_options: dict = field(default_factory=dict)
    shown: str = ""  # the URL without its password
    url: str = field(default="", repr=False)  # the URL as given

    @property
    def prefix(self) -> str:
        return f"dcp:{self.group}:"


def _seconds(shown: str, name: str, value: str) -> float:
    import humanfriendly

    text = value.strip().lower()
    if name == "keep" and text in ("forever", "never", "0"):
        return 0.0
    try:
        seconds = float(text) if re.fullmatch(r"[0-9.]+", text) else humanfriendly.parse_timespan(text)
    except (ValueError, humanfriendly.InvalidTimespan):
        seconds = -1.0
    if not seconds > 0:
        raise SchedulerError(f"scheduler URL {shown}: option {name}={value!r} is not a duration; write e.g. {name}=30s, 5m or 7d"
                             + (" (or keep=forever)" if name == "keep" else ""))
    return seconds


def parse_redis_url(url: str) -> RedisTarget:
    """A ``RedisTarget``; ``SchedulerError`` saying what is wrong (never quoting the password)."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in ("redis", "rediss"):
        raise SchedulerError(f"not a Redis URL (scheme {scheme!r}); write {_FORM}")
    password = unquote(parts.password) if parts.password is not None else None
    shown = redact_url(url)
    try:
        host, port = parts.hostname, parts.port
    except ValueError as e:  # urllib: "Port could not be cast to integer value ..." or "Port out of range 0-65535"
        what = "is out of range (1-65535)" if "out of range" in str(e) else "is not a number"
        raise SchedulerError(f"scheduler URL {shown}: the port {what}; write {_FORM}") from None
    if not host:
        raise SchedulerError(f"scheduler URL {shown} names no host; write {_FORM}")
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise SchedulerError(f"scheduler URL {shown}: the path must be a database number such as /0, not /{path}; "
                             "name a team's namespace with ?group=NAME")
    options = dict(parse_qsl(parts.query, keep_blank_values=True))
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise SchedulerError(f"scheduler URL {shown}: unknown option {unknown[0]!r}; known: {', '.join(_OPTIONS)}")
    tls_options = {k: v for k, v in options.items() if k in _TLS_OPTIONS}
    if tls_options and scheme != "rediss":
        raise SchedulerError(f"scheduler URL {shown}: {next(iter(tls_options))} needs TLS; write rediss://")
    for name in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_ca_path"):
        if name in tls_options and not os.path.exists(tls_options[name]):
            raise SchedulerError(f"scheduler URL {shown}: {name}={tls_options[name]} does not exist")
    if "ssl_check_hostname" in tls_options:
        flag = tls_options["ssl_check_hostname"].lower()
        if flag not in ("true", "false", "1", "0", "yes", "no"):
            raise SchedulerError(f"scheduler URL {shown}: ssl_check_hostname must be true or false")
        tls_options["ssl_check_hostname"] = flag in ("true", "1", "yes")
    if tls_options.get("ssl_cert_reqs", "required") not in ("required", "optional", "none"):
        raise SchedulerError(f"scheduler URL {shown}: ssl_cert_reqs must be required, optional or none")
    group = options.get("group", "default")
    if not _GROUP.match(group):
        raise SchedulerError(f"scheduler URL {shown}: group {group!r} must be 1-64 letters, digits, '_', '.' or '-'")
    if password is None and os.environ.get(ENV_PASSWORD):
        password = os.environ[ENV_PASSWORD]
    return RedisTarget(
        host=host, port=port or 6379, db=int(path or 0), username=unquote(parts.username) if parts.username else None,
        password=password, tls=scheme == "rediss", group=group,
        keep=_seconds(shown, "keep", options["keep"]) if "keep" in options else DEFAULT_KEEP,
        retry=_seconds(shown, "retry", options["retry"]) if "retry" in options else DEFAULT_RETRY,
        timeout=_seconds(shown, "timeout", options["timeout"]) if "timeout" in options else DEFAULT_TIMEOUT,
        tls_options=tls_options, shown=shown, url=url.strip(),
    )


#: Servers already warned about in this process (``Link.warn_if_evicting``).
_EVICTING: set[str] = set()


class Link:
    """The client of one ``RedisTarget`` (a thread-safe connection pool) and the retry loop every
    call goes through.

    ``call(what, fn)`` runs ``fn(client)``; when the connection is lost it waits (50 ms doubling to
    2 s) and runs it again, for up to ``target.retry`` seconds, then raises ``RedisUnavailable``.
    Every call the backend makes is safe to run twice: scripts settle slices once whatever the
    number of tries, and those that are not naturally idempotent (lease, submit, post_events,
    delete) carry a request token whose effect the server remembers for five minutes.

    An outage is logged once however many threads ride it out (a worker's lease, heartbeat and
    report calls each retry on their own), again every ~30 s while it lasts, and its end once.
    """

    def __init__(self, target: RedisTarget) -> None:
        self.target = target
        kwargs: dict[str, Any] = {}
        if target.tls:
            kwargs["ssl"] = True
            kwargs.update(target.tls_options)
        self.client = redis.Redis(
            host=target.host, port=target.port, db=target.db, username=target.username, password=target.password,
            socket_timeout=target.timeout, socket_connect_timeout=min(target.timeout, 5.0), socket_keepalive=True,
            health_check_interval=30, retry=Retry(NoBackoff(), 0), client_name="dcp-worktimes",
            protocol=2,  # the reply shapes reads.py expects, whatever the client's default
            **kwargs)
        self._closed = threading.Event()
        # give_up_after: once _stop is set, a call waiting for the server gives up _stop_grace s later
        self._stop: threading.Event | None = None
        self._stop_grace = 0.0
        self._stop_seen: float | None = None
        self._outage_lock = threading.Lock()
        self._outage: float | None = None  # when the current outage was first seen (monotonic)
        self._outage_said = 0.0  # when it was last logged

    def check(self) -> None:
        """One try (no retry loop): reachable, credentials accepted, Redis 7 or later."""
        try:
            hello = self.client.execute_command("HELLO")  # allowed to every user (INFO may not be)
        except redis.exceptions.ResponseError as e:
            if "unknown command" not in str(e).lower():
                raise self.explain(e, "connect") from None
            hello = {}
        except Exception as e:  # noqa: BLE001 - every failure here is one message naming the URL
            raise self.explain(e, "connect") from None
        if isinstance(hello, list):  # RESP2: a flat list of names and values
            hello = dict(zip(hello[::2], hello[1::2]))
        raw = hello.get(b"version", hello.get("version", b"0"))
        version = raw.decode() if isinstance(raw, bytes) else str(raw)
        if int(version.split(".")[0] or 0) < 7:
            raise SchedulerError(f"the Redis server at {self.target.shown} runs Redis {version}; the scheduler needs "
                                 "Redis 7 or later (streams with sequence ids, scripts that read the server clock)")

    def warn_if_evicting(self) -> None:
        """Log once per server and process when it may evict any key to make room (``maxmemory``
        set with an ``allkeys-*`` policy): a job's slices or results would vanish unannounced."""
        try:
            info = self.client.info("memory")
        except Exception:  # noqa: BLE001 - INFO may be denied to this user; the check is a courtesy
            return
        policy = str(info.get("maxmemory_policy", ""))
        if int(info.get("maxmemory", 0) or 0) and policy.startswith("allkeys") and self.target.shown not in _EVICTING:
            _EVICTING.add(self.target.shown)
            log.warning("the Redis server at %s evicts keys when full (maxmemory-policy %s): jobs' slices and results "
                        "would then be lost without a word; set maxmemory-policy noeviction (calls then fail saying "
                        "the server is out of memory)", self.target.shown, policy)

    def writes_refused(self) -> str | None:
        """Why the server refuses writes now, read from ``INFO`` (one try, no retry loop): its
        ``maxmemory`` reached, a failed snapshot with writes stopped, or a read-only replica.
        ``None`` when none of these holds, or when the server does not answer or this user may
        not run ``INFO`` (the failing calls then say why themselves)."""
        try:
            info = self.client.info()
        except Exception:  # noqa: BLE001 - see above
            return None
        shown = self.target.shown
        used, cap = int(info.get("used_memory", 0) or 0), int(info.get("maxmemory", 0) or 0)
        # An allkeys-* policy evicts to make room and takes the write (warn_if_evicting says what
        # that costs); noeviction, and volatile-* with too few keys that expire, refuse it.
        if cap and used >= cap and not str(info.get("maxmemory_policy", "")).startswith("allkeys"):
            return (f"the Redis server at {shown} is out of memory (it uses {used / 2**20:.1f} MiB of its maxmemory "
                    f"{cap / 2**20:.1f} MiB), so workers can neither check in nor record results; delete finished "
                    "jobs (dcp-worker jobs --delete) or raise its maxmemory")
        if info.get("rdb_last_bgsave_status") == "err":
            try:
                stops = self.client.config_get("stop-writes-on-bgsave-error").get("stop-writes-on-bgsave-error")
            except Exception:  # noqa: BLE001 - CONFIG may be denied: it stops writes by default
                stops = "yes"
            if stops == "yes":
                return (f"the Redis server at {shown} refuses writes: its last snapshot to disk failed (MISCONF); "
                        "see its log, give its dir space or permissions, or set stop-writes-on-bgsave-error no")
        if info.get("role") == "slave":
            return (f"the Redis server at {shown} is a read-only replica; point --scheduler and DCP_SCHEDULER at "
                    "its primary")
        return None

    def explain(self, e: BaseException, what: str) -> SchedulerError:
        """A ``SchedulerError`` for ``e`` that names the server (never the password) and what to do."""
        r = redis.exceptions
        shown = self.target.shown
        text = self._clean(str(e))
        if isinstance(e, (r.AuthenticationError, r.AuthenticationWrongNumberOfArgsError)) or "WRONGPASS" in text \
                or "NOAUTH" in text:
            return SchedulerError(f"the Redis server at {shown} refused the credentials ({text}); check the user and "
                                  f"password in the URL (or ${ENV_PASSWORD})")
        if isinstance(e, r.NoPermissionError) or "NOPERM" in text or "can't access at least one of the keys" in text:
            keys = "can't access at least one of the keys" in text or "access one of the keys" in text
            return SchedulerError(f"the Redis server at {shown} does not allow this user to {what} ({text}); its ACL "
                                  f"must allow the keys dcp:{self.target.group}:* and the commands EVALSHA, SCRIPT, "
                                  "XREAD, ZRANGE, LRANGE, HMGET, LLEN, INFO, CLIENT SETNAME and HELLO (the README's "
                                  "example: +@all -@admin -@dangerous)" + (
                                      "; or the URL's ?group= is not the group this user is confined to" if keys else ""))
        if isinstance(e, r.InvalidResponse):  # an HTTP server, a database of another kind on that port
            return SchedulerError(f"the server at {shown} does not answer as Redis does ({text}); check the port in the "
                                  "URL (redis-server listens on 6379 by default)")
        if "DB index is out of range" in text:
            return SchedulerError(f"the Redis server at {shown} has no database {self.target.db} ({text}): it has as many "
                                  "as its `databases` setting (16 by default, numbered from 0); choose one in the URL's "
                                  "path, such as redis://host:6379/0")
        if isinstance(e, r.OutOfMemoryError) or text.startswith("OOM"):
            return RedisUnavailable(f"the Redis server at {shown} is out of memory ({text}); delete finished jobs "
                                    "(dcp-worker jobs --delete) or raise its maxmemory")
        if isinstance(e, (r.ConnectionError, r.TimeoutError, OSError)):
            return RedisUnavailable(f"cannot reach the Redis scheduler at {shown}: {text}; is redis-server running "
                                    "there, and does the URL (host, port, rediss:// for TLS) match it?")
        return SchedulerError(f"the Redis scheduler at {shown} failed to {what}: {type(e).__name__}: {text}")

    def _clean(self, text: str) -> str:
        password = self.target.password
        return text.replace(password, "***") if password else text

    def give_up_after(self, stop: threading.Event, grace: float) -> None:
        """Once ``stop`` is set, calls (the one waiting now included) wait for an unreachable
        server ``grace`` seconds more at most, not the URL's whole ``retry``."""
        self._stop, self._stop_grace = stop, grace

    def call(self, what: str, fn: Callable[[Any], T]) -> T:
        r = redis.exceptions
        delay, deadline, failures = 0.05, None, 0
        while True:
            try:
                result = fn(self.client)
                if self._outage is not None:
                    self._recovered()
                return result
            except (r.AuthenticationError, r.AuthorizationError, r.NoPermissionError, r.OutOfMemoryError) as e:
                raise self.explain(e, what) from None
            except (r.ConnectionError, r.TimeoutError, r.ReadOnlyError) as e:
                error: BaseException = e
            except r.ResponseError as e:
                if not str(e).startswith(("BUSY", "LOADING", "MASTERDOWN", "TRYAGAIN")):
                    raise self.explain(e, what) from None
                error = e
            now = time.monotonic()
            if deadline is None:
                deadline = now + self.target.retry
            if self._stop is not None and self._stop.is_set():  # the process is stopping: a bounded wait
                if self._stop_seen is None:
                    self._stop_seen = now
                deadline = min(deadline, self._stop_seen + self._stop_grace)
            failures += 1
            if now >= deadline or self._closed.is_set():
                with self._outage_lock:  # this call gave up: the next failure is a new outage
                    self._outage = None
                if isinstance(error, r.ReadOnlyError):
                    raise RedisUnavailable(
                        f"the Redis server at {self.target.shown} is a read-only replica ({what}: "
                        f"{self._clean(str(error))}); point --scheduler and DCP_SCHEDULER at its primary") from None
                if self._stop_seen is not None:
                    raise RedisUnavailable(f"the Redis scheduler at {self.target.shown} did not answer ({what}: "
                                           f"{self._clean(str(error))}); stopping without waiting longer") from None
                raise RedisUnavailable(
                    f"the Redis scheduler at {self.target.shown} has been unreachable for {self.target.retry:.0f} s "
                    f"({what}): {self._clean(str(error))}; raise ?retry= in the URL to wait longer") from None
            self._unreachable(now, what, error, deadline - now)
            time.sleep(min(delay, max(0.0, deadline - now)))
            delay = min(delay * 2, 2.0)

    def _unreachable(self, now: float, what: str, error: BaseException, left: float) -> None:
        with self._outage_lock:
            if self._outage is None:
                self._outage = now
            elif now - self._outage_said < 30.0:
                return
            self._outage_said = now
        if isinstance(error, redis.exceptions.ReadOnlyError):  # retried: a failover may promote it
            log.warning("the Redis server at %s is a read-only replica (%s: %s); point --scheduler and DCP_SCHEDULER at "
                        "its primary; retrying for up to %.0f s more in case it is promoted",
                        self.target.shown, what, self._clean(str(error)), left)
            return
        log.warning("the Redis scheduler at %s is unreachable (%s: %s); retrying for up to %.0f s more",
                    self.target.shown, what, self._clean(str(error)), left)

    def _recovered(self) -> None:
        with self._outage_lock:
            began, self._outage = self._outage, None
        if began is not None:
            log.warning("the Redis scheduler at %s is reachable again (after %.1f s)", self.target.shown,
                        time.monotonic() - began)

    def close(self) -> None:
        self._closed.set()
        self.client.close()
        self.client.connection_pool.disconnect()
