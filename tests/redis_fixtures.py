"""A private redis-server for the Redis scheduler's tests (session-wide), and a fresh group per test.

Tests that need Redis skip, naming the install command, when ``redis-server`` or the ``redis``
client is missing.
"""

from __future__ import annotations

import uuid

import pytest

from dcp_worktimes.scheduler.redis.server import INSTALL, RedisServer, redis_server_path

PASSWORD = "pw-never-shown-7f3a"


def require_redis() -> None:
    if redis_server_path() is None:
        pytest.skip(f"redis-server is not installed ({INSTALL})")
    try:
        import redis  # noqa: F401
    except ImportError:
        pytest.skip("the redis client is not installed (pip install 'dcp-worktimes[redis]')")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """One password-protected redis-server (AOF on) for the session."""
    require_redis()
    server = RedisServer(tmp_path_factory.mktemp("redis"), password=PASSWORD).start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server):
    """The URL of a group no other test uses (a fresh, empty store)."""
    return redis_server.url(group="t" + uuid.uuid4().hex[:12])
