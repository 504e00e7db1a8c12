"""The embedded store's applications: published versions, and the categories each worker serves.

One row per ``(name, version)``: the ``ApplicationRecord`` as msgpack, with the publishing
identity's fingerprint as a column so the ownership check of a publish is one indexed read in the
same transaction as the insert (two identities racing for a new name cannot both own it).
"""

from __future__ import annotations

import time

from ...values import pack, unpack
from ..base import ApplicationRecord, ApplicationRefused, pick_version, validate_application
from .store import Store


class Applications:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.db = store.db
        self._categories_sent: dict[str, list[str]] = {}  # worker id -> what this process last wrote

    # -- publishing and reading -------------------------------------------------------------------
    def publish(self, app: ApplicationRecord) -> None:
        validate_application(app)
        app.published = app.published or time.time()
        with self.store.tx():
            row = self.db.execute("SELECT owner FROM applications WHERE name = ? LIMIT 1", (app.name,)).fetchone()
            if row is not None and row[0] != app.owner:
                raise ApplicationRefused(
                    f"application {app.name!r} was published by another identity; only the identity that first "
                    "published it can publish its new versions (choose another name, or publish with that identity)")
            if self.db.execute("SELECT 1 FROM applications WHERE name = ? AND version = ?",
                               (app.name, app.version)).fetchone():
                raise ApplicationRefused(
                    f"application {app.name} {app.version} is already published and never changes; publish the change "
                    "as a new version (e.g. the next patch version)")
            self.db.execute("INSERT INTO applications (name, version, owner, published, record) VALUES (?, ?, ?, ?, ?)",
                            (app.name, app.version, app.owner, app.published, pack(app.to_dict())))

    def get(self, name: str, version: str | None) -> ApplicationRecord:
        with self.store.lock:
            rows = self.db.execute("SELECT version, record FROM applications WHERE name = ?", (name,)).fetchall()
        records = dict(rows)
        return ApplicationRecord.from_dict(unpack(records[pick_version(name, records, version)]))

    def list(self) -> list[ApplicationRecord]:
        from ...versions import parse_version

        with self.store.lock:
            rows = self.db.execute("SELECT record FROM applications").fetchall()
        apps = [ApplicationRecord.from_dict(unpack(r)) for (r,) in rows]
        return sorted(apps, key=lambda a: (a.name, parse_version(a.version)))

    # -- worker categories ------------------------------------------------------------------------
    def serve(self, worker_id: str, categories: list[str]) -> None:
        """Record the categories ``worker_id`` serves (a write only when they change)."""
        if self._categories_sent.get(worker_id) == categories:
            return
        with self.store.tx():
            self.db.execute("INSERT INTO worker_categories (worker_id, categories) VALUES (?, ?) "
                            "ON CONFLICT(worker_id) DO UPDATE SET categories = excluded.categories",
                            (worker_id, pack(list(categories))))
            # Rows of workers that are gone (the worker table forgets them) are dropped here.
            self.db.execute("DELETE FROM worker_categories WHERE worker_id NOT IN (SELECT id FROM workers) "
                            "AND worker_id != ?", (worker_id,))
        self._categories_sent[worker_id] = list(categories)

    def served(self) -> dict[str, list[str]]:
        with self.store.lock:
            rows = self.db.execute("SELECT worker_id, categories FROM worker_categories").fetchall()
        return {w: unpack(c) for w, c in rows}

    def forget_worker(self, worker_id: str) -> None:
        """Inside a transaction."""
        self.db.execute("DELETE FROM worker_categories WHERE worker_id = ?", (worker_id,))
        self._categories_sent.pop(worker_id, None)
