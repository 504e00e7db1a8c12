"""Published applications in Redis: ``apps`` HASH name -> the owner that first published it, and
``app:<name>`` HASH version -> the ``ApplicationRecord`` (msgpack). Publishing is one script, so
the ownership check and the insert are one step (two identities racing for a new name cannot both
own it). Applications do not expire with jobs.
"""

from __future__ import annotations

import time
from typing import Any

from ...values import pack, unpack
from ...versions import parse_version
from ..base import ApplicationRecord, ApplicationRefused, pick_version, validate_application
from .connection import Link
from .keys import Keys
from .leases import LeaseEngine


class Applications:
    def __init__(self, link: Link, keys: Keys, leases: LeaseEngine) -> None:
        self.link, self.keys, self.leases = link, keys, leases

    def publish(self, app: ApplicationRecord) -> None:
        validate_application(app)
        app.published = app.published or time.time()
        got = self.leases.run("publish", "publish an application", [app.name, app.version, app.owner,
                                                                     pack(app.to_dict())])
        if got == -1:
            raise ApplicationRefused(
                f"application {app.name!r} was published by another identity; only the identity that first "
                "published it can publish its new versions (choose another name, or publish with that identity)")
        if got == -2:
            raise ApplicationRefused(
                f"application {app.name} {app.version} is already published and never changes; publish the change "
                "as a new version (e.g. the next patch version)")

    def get(self, name: str, version: str | None) -> ApplicationRecord:
        records = self.link.call("read an application", lambda c: c.hgetall(self.keys.application(name)))
        by_version = {v.decode(): r for v, r in records.items()}
        return ApplicationRecord.from_dict(unpack(by_version[pick_version(name, by_version, version)]))

    def list(self) -> list[ApplicationRecord]:
        def read(c: Any) -> list:
            names = c.hkeys(self.keys.applications)
            pipe = c.pipeline(transaction=False)
            for name in names:
                pipe.hvals(self.keys.application(name.decode()))
            return pipe.execute()

        apps = [ApplicationRecord.from_dict(unpack(r)) for records in self.link.call("list applications", read)
                for r in records]
        return sorted(apps, key=lambda a: (a.name, parse_version(a.version)))
