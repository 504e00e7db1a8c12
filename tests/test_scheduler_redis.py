"""The Redis scheduler passes the scheduler conformance suite against a real redis-server, plus
its own checks: URLs and credentials, storage shapes (no key per slice), namespaces, expiry."""

from __future__ import annotations

import pytest

from dcp_worktimes.scheduler import open_scheduler
from dcp_worktimes.testing_scheduler import SchedulerConformance

from .redis_fixtures import redis_server, redis_url  # noqa: F401 - fixtures


class TestRedisScheduler(SchedulerConformance):
    @pytest.fixture
    def scheduler(self, redis_url):  # noqa: F811
        s = open_scheduler(redis_url)
        yield s
        s.close()

    @pytest.fixture
    def reopen(self, redis_url):  # noqa: F811
        return lambda: open_scheduler(redis_url)
