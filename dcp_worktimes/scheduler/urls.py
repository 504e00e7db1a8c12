"""Scheduler URLs: ``sqlite:///abs/path.db``, ``sqlite://rel/path.db``, ``sqlite://:memory:``, a ``.db`` path;
``redis://`` and ``rediss://`` (TLS) URLs of a shared Redis server (``redis/connection.py`` reads them).

>>> parse_url("sqlite:////tmp/jobs.db")
('sqlite', '/tmp/jobs.db')
>>> parse_url("sqlite:///tmp/jobs.db")
('sqlite', '/tmp/jobs.db')
>>> parse_url("/tmp/jobs.db")
('sqlite', '/tmp/jobs.db')
>>> parse_url("redis://db-host:6379/0?group=physics")
('redis', 'redis://db-host:6379/0?group=physics')
"""

from __future__ import annotations

import os
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from .base import SchedulerError

_HINT = ("write sqlite:///absolute/path.db or redis://[:password@]host:6379/0 (or set DCP_SCHEDULER to such a "
         "URL)")


def parse_url(url: str) -> tuple[str, str]:
    """``(backend kind, target)``; ``SchedulerError`` saying how to write a valid URL."""
    if not isinstance(url, str) or not url.strip():
        raise SchedulerError(f"empty scheduler URL; {_HINT}")
    url = url.strip()
    if url.lower().startswith("sqlite://"):
        rest = url[len("sqlite://"):]
        if rest in (":memory:", "/:memory:"):
            return "sqlite", ":memory:"
        if "?" in rest or "#" in rest:
            # A file named "x.db?mode=ro" would be made instead: SQLite's URI options are not ours.
            raise SchedulerError(f"scheduler URL {url!r} has a query or fragment ({rest[rest.find('?' if '?' in rest else '#'):]!r}); "
                                 f"a SQLite store takes no options: sqlite:///path/jobs.db ({_HINT})")
        if rest.startswith("~/") or rest.startswith("/~/"):  # before unquote: %7E is a folder named ~
            rest = os.path.expanduser(rest.lstrip("/"))  # sqlite://~/jobs.db and sqlite:///~/jobs.db: home
        rest = unquote(rest)  # %20 is a space, as in any URL
        if rest.startswith("/"):
            # sqlite:///tmp/x.db and sqlite:////tmp/x.db both mean /tmp/x.db (SQLAlchemy's is the
            # four-slash form; people write three and mean absolute).
            path = "/" + rest.lstrip("/")
        else:
            path = os.path.abspath(rest)
        if not rest.strip("/"):
            raise SchedulerError(f"scheduler URL {url!r} has no file path; {_HINT}")
        return "sqlite", path
    if url.lower().startswith(("redis://", "rediss://")):
        # The target is the URL itself (it may hold a password: never put it in a message).
        return "redis", url
    if "://" in url:
        scheme = url.split("://", 1)[0]
        shown = url.split("@", 1)[1] if "@" in url else url  # whatever it is, no credentials in the message
        raise SchedulerError(f"unsupported scheduler URL scheme {scheme!r} in {shown!r}; supported: sqlite, redis, "
                             f"rediss ({_HINT})")
    if url.endswith((".db", ".sqlite", ".sqlite3")):
        return "sqlite", os.path.abspath(os.path.expanduser(url))
    raise SchedulerError(f"cannot read {url!r} as a scheduler URL; {_HINT}")


def sqlite_url(path: str) -> str:
    """The URL ``parse_url`` reads back as the store at absolute ``path`` (``#``, ``?``, ``%`` and a
    leading ``~`` in its names escaped): what helper processes are given.

    >>> parse_url(sqlite_url("/tmp/job #1?%41.db"))
    ('sqlite', '/tmp/job #1?%41.db')
    """
    return "sqlite:///" + quote(path.lstrip("/"), safe="/")


def redact_url(url: str) -> str:
    """``url`` with its password (if any) shown as ``***``: the form for messages, logs and events.

    >>> redact_url("redis://team:s3cret@db-host:6379/0?group=physics")
    'redis://team:***@db-host:6379/0?group=physics'
    >>> redact_url("sqlite:///tmp/jobs.db")
    'sqlite:///tmp/jobs.db'
    """
    try:
        parts = urlsplit(url.strip())
        password = parts.password
    except ValueError:
        return url.split("@", 1)[-1] if "@" in url else url
    if password is None:
        return url.strip()
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, f"{parts.username or ''}:***@{host}", parts.path, parts.query, parts.fragment))
