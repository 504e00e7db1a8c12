"""A private redis-server for the Redis scheduler's tests (session-wide), and a fresh group per test.

Tests that need Redis skip, naming the install command, when ``redis-server`` or the ``redis``
client is missing.
"""

from __future__ import annotations

import shutil
import uuid

import pytest

PASSWORD = "pw-never-shown-7f3a"


def require_redis() -> None:
    """Skip, saying what to install, without redis-server or the redis client (nothing is imported
    before: conftest imports this module in every session)."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    try:
        import redis  # noqa: F401 - only whether it imports
    except ImportError:
        pytest.skip("the redis client is not installed (pip install 'dcp-worktimes[redis]')")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """One password-protected redis-server (AOF on) for the session."""
    require_redis()
    from dcp_worktimes.scheduler.redis.server import RedisServer

    server = RedisServer(tmp_path_factory.mktemp("redis"), password=PASSWORD).start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server):
    """The URL of a group no other test uses (a fresh, empty store)."""
    return redis_server.url(group="t" + uuid.uuid4().hex[:12])
