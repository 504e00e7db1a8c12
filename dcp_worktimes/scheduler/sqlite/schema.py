"""The embedded store's file: its tables, how it is opened, and its transactions.

Tables, and why they are shaped so:

* ``jobs``: one row per job, the ``JobRecord`` as msgpack plus the hot counters as columns
  (``next_slice``, ``pending``, ``distributed``, ``computed``, ``failed``, ``seq``, ``added``) so
  leasing and status never scan slices.
* ``leases``: one row per batch handed to a worker (not per slice): its expiry, and either a
  contiguous run ``[first, stop)`` of fresh slices of a range/distribution/stream with a bitmap of
  the ones already settled (those slices never get a slice row: ``next_slice`` walks the input),
  or, for ``first IS NULL``, the slice rows that point at it. Heartbeats extend one row per batch.
* ``slices``: stream datums (state ``QUEUED``: leased in runs by the ``next_slice`` cursor exactly
  like a range, so never updated one by one; the row stays so a slice added twice is not run
  twice), and slices that are ``PENDING`` (retries, returns), ``LEASED`` from pending, or ``DONE``.
  Datum NULL for described inputs: recomputed from the description. A job's rows are deleted
  when it reaches a final state.
* ``results``: one row per reported *batch*: the msgpack of its columns (``RESULT_COLUMNS``) under
  the per-job sequence numbers ``seq .. last``.
* ``events``: the job's event log; ``result`` and ``error`` events are not stored twice but
  expanded from ``results`` in the same per-job sequence.
* ``workers``: live workers (host, pid, worktimes, capabilities).

Stores of another format are refused with a message (no release ever needed a migration).
"""

from __future__ import annotations

import logging
import os
import socket
import sqlite3
import threading
import time
from typing import Any

from ..base import SchedulerError

SCHEMA_VERSION = 4
#: Slice row states. QUEUED: a stream slice not leased yet (walked by ``next_slice`` like a range).
PENDING, LEASED, DONE, QUEUED = 0, 1, 2, 3
HOST = socket.gethostname()
#: The columns of a ``results`` row, in order (each a list with one entry per slice of the batch).
RESULT_COLUMNS = ("numbers", "oks", "values", "errors", "walls", "cpus", "bytes_in", "bytes_out", "attempts", "workers")

_DDL = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    record BLOB NOT NULL,
    payment REAL NOT NULL,
    created REAL NOT NULL,
    status TEXT NOT NULL,
    reason TEXT,
    total INTEGER,
    described INTEGER NOT NULL,
    next_slice INTEGER NOT NULL DEFAULT 0,
    pending INTEGER NOT NULL DEFAULT 0,
    distributed INTEGER NOT NULL DEFAULT 0,
    computed INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    seq INTEGER NOT NULL DEFAULT 0,
    added INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status, payment DESC, created);
CREATE TABLE IF NOT EXISTS slices (
    job_id TEXT NOT NULL,
    n INTEGER NOT NULL,
    state INTEGER NOT NULL,
    retry INTEGER NOT NULL DEFAULT 0,
    datum BLOB,
    lease_id TEXT,
    attempt INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (job_id, n)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS slices_pending ON slices(job_id, retry DESC, n) WHERE state = 0;
CREATE INDEX IF NOT EXISTS slices_lease ON slices(lease_id) WHERE state = 1;
CREATE TABLE IF NOT EXISTS leases (
    id TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    worker_id TEXT NOT NULL,
    expires REAL NOT NULL,
    first INTEGER,
    stop INTEGER,
    bits BLOB,
    count INTEGER NOT NULL,
    done INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS leases_expiry ON leases(expires);
CREATE INDEX IF NOT EXISTS leases_worker ON leases(worker_id);
CREATE TABLE IF NOT EXISTS results (
    job_id TEXT NOT NULL,
    last INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (job_id, last)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    job_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    event BLOB NOT NULL,
    PRIMARY KEY (job_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS workers (
    id TEXT PRIMARY KEY,
    host TEXT, pid INTEGER,
    worktimes BLOB, capabilities BLOB,
    last_seen REAL
);
"""

log = logging.getLogger(__name__)

# In-process wake-ups: every store on the same file in this process shares one condition, so a
# deployer waiting for events wakes as soon as a local worker commits.
_conditions: dict[str, threading.Condition] = {}
_conditions_lock = threading.Lock()


def condition(key: str) -> threading.Condition:
    with _conditions_lock:
        return _conditions.setdefault(key, threading.Condition())


def open_database(path: str) -> sqlite3.Connection:
    """A connection to the store at ``path`` (``":memory:"`` for a private one), created if new.

    WAL mode (readers never block the writer), ``synchronous = NORMAL`` (a power cut may lose the
    last commits, never corrupts the store). ``SchedulerError`` for a file that is not a store of
    this format, or a directory that cannot be created.
    """
    if path != ":memory:":
        directory = os.path.dirname(os.path.abspath(path))
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as e:
            raise SchedulerError(f"cannot create the scheduler directory {directory}: {e}; choose another path with "
                                 "DCP_SCHEDULER=sqlite:///path.db") from None
    try:
        db = sqlite3.connect(path, timeout=60.0, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA busy_timeout = 60000")
        if path != ":memory:":
            mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise SchedulerError(f"{path}: SQLite refused WAL mode ({mode}); put the store on a local disk")
        db.execute("PRAGMA synchronous = NORMAL")
        db.execute("BEGIN IMMEDIATE")
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, SCHEMA_VERSION):
                raise SchedulerError(
                    f"{path} was written by another version of dcp-worktimes (store format {version}, this one reads "
                    f"{SCHEMA_VERSION}); move it away or choose another store with DCP_SCHEDULER=sqlite:///path.db")
            for stmt in _DDL.split(";"):
                if stmt.strip():
                    db.execute(stmt)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
    except sqlite3.DatabaseError as e:
        raise SchedulerError(f"cannot open the scheduler store {path}: {e}; is it a dcp-worktimes SQLite file?") from None
    return db


class Transaction:
    """``BEGIN IMMEDIATE`` … ``COMMIT`` (rollback on error); re-entrant within one thread.

    ``lock`` is the store's ``RLock`` (one connection serves every thread of the process).
    """

    def __init__(self, db: sqlite3.Connection, lock: threading.RLock, path: str) -> None:
        self.db, self.lock, self.path = db, lock, path
        self.outer = False

    def __enter__(self) -> None:
        self.lock.acquire()
        try:
            self.outer = not self.db.in_transaction
            if self.outer:
                self._begin()
        except BaseException:
            self.lock.release()
            raise

    def _begin(self) -> None:
        # Another process holding the write lock (a SIGSTOPped worker, a Ctrl-Z) must make us
        # wait, not crash: the busy timeout waits 60 s per attempt, and we keep trying, saying so.
        waited = 0.0
        while True:
            started = time.monotonic()
            try:
                self.db.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) and "busy" not in str(e):
                    raise
                waited += time.monotonic() - started
                log.warning("the job store %s has been locked by another process for %.0f s (a stopped worker or "
                            "deployer?); still waiting", self.path, waited)

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            if self.outer:
                self.db.execute("COMMIT" if exc_type is None else "ROLLBACK")
        finally:
            self.lock.release()
