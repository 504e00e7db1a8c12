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
* ``applications``: published application versions, the ``ApplicationRecord`` as msgpack under
  ``(name, version)``, with the publishing identity's fingerprint as a column (``applications.py``).
* ``worker_categories``: the application categories a worker serves (``dcp-worker --category``),
  written once when it first leases; a table of its own so that ``workers`` keeps its shape.
* ``feed_leases``: the deadline of each stream job whose deployer is still sending its input
  (``keep_feeding``), and that deployer's host, pid and start time; the lease engine's reclaim
  cancels a job whose deadline passed with its input open, or, on the deployer's host, whose
  deployer process is gone (and not while it lives). A table of its own, created ``IF NOT EXISTS``, so the format (``SCHEMA_VERSION``) did not
  change: a store written before it existed gains it when opened, a stream job with no row in it
  never expires this way, and a version that does not know the table leaves it alone.
* ``lease_unstarted``: per lease, the slices its worker had not started at its last heartbeat
  (``heartbeat(unstarted=...)``): a lease that expires returns them without using an attempt.
  Added the same way as ``feed_leases`` (a store without it gains it; an older version ignores
  it, and a row whose lease is gone is deleted at the next heartbeat). A slice returned so is
  marked ``retry = 2`` until it is next leased and lost: then it is charged in any case.

Stores of another format are refused with a message (no release ever needed a migration).
"""

from __future__ import annotations

import logging
import os
import re
import sqlite3
import threading
import time
from typing import Any

from ..base import SchedulerError, StoreDamaged, StoreUnavailable
from ..host import HOST_KEY

SCHEMA_VERSION = 4
#: ``PRAGMA application_id`` of a job store ("DCPW"): tells it from another program's database.
APPLICATION_ID = 0x44435057
#: Tables every store of this format has (a store made before the mark is told by them).
_OUR_TABLES = frozenset({"jobs", "slices", "leases", "results", "events", "workers"})
#: Slice row states. QUEUED: a stream slice not leased yet (walked by ``next_slice`` like a range).
PENDING, LEASED, DONE, QUEUED = 0, 1, 2, 3
HOST = HOST_KEY  # which processes this one can see (host.py): a pid is judged only under it
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
CREATE TABLE IF NOT EXISTS applications (
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    owner TEXT NOT NULL,
    published REAL NOT NULL,
    record BLOB NOT NULL,
    PRIMARY KEY (name, version)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS worker_categories (
    worker_id TEXT PRIMARY KEY,
    categories BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS feed_leases (
    job_id TEXT PRIMARY KEY,
    expires REAL NOT NULL,
    host TEXT,      -- the deploying process, when it asked to be watched (keep_feeding(watch_caller=True))
    pid INTEGER,
    started REAL    -- its start time (psutil create_time): a pid reused later is not it
);
CREATE TABLE IF NOT EXISTS lease_unstarted (
    lease_id TEXT PRIMARY KEY,
    numbers BLOB NOT NULL   -- msgpack list: the lease's slices its worker had not started at its last heartbeat
);
"""

log = logging.getLogger(__name__)

class StoreConnection(sqlite3.Connection):
    """A ``sqlite3.Connection`` whose errors name the store and say what is wrong: every
    ``sqlite3.DatabaseError`` (disk full, I/O error, read-only, corrupt file) becomes a
    ``SchedulerError`` from ``store_error``, so no raw sqlite exception leaves the store."""

    store_path = ":memory:"

    def cursor(self, factory: Any = None) -> sqlite3.Cursor:  # ``execute`` makes its cursor here
        return super().cursor(factory or StoreCursor)

    def execute(self, *args: Any) -> sqlite3.Cursor:
        try:
            return super().execute(*args)
        except sqlite3.DatabaseError as e:
            raise store_error(e, self.store_path) from None

    def executemany(self, *args: Any) -> sqlite3.Cursor:
        try:
            return super().executemany(*args)
        except sqlite3.DatabaseError as e:
            raise store_error(e, self.store_path) from None


class StoreCursor(sqlite3.Cursor):
    """Rows are read lazily: a damaged page may only show while fetching."""

    def fetchone(self) -> Any:
        try:
            return super().fetchone()
        except sqlite3.DatabaseError as e:
            raise store_error(e, self.connection.store_path) from None

    def fetchall(self) -> list:
        try:
            return super().fetchall()
        except sqlite3.DatabaseError as e:
            raise store_error(e, self.connection.store_path) from None

    def __next__(self) -> Any:
        try:
            return super().__next__()
        except sqlite3.DatabaseError as e:
            raise store_error(e, self.connection.store_path) from None


class StoreBusy(StoreUnavailable):
    """Another process holds the store's write lock (``Transaction`` waits for it)."""


#: Where to move a store that cannot be used (the same hint everywhere).
_ELSEWHERE = "or use another store (DCP_SCHEDULER=sqlite:///other/path.db)"


def _file_size_cap() -> int | None:
    """This process's file-size limit in bytes (``RLIMIT_FSIZE``, soft), or ``None`` without one."""
    import resource

    soft, _hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    return None if soft == resource.RLIM_INFINITY else soft

def store_error(e: sqlite3.Error, path: str) -> SchedulerError:
    """The ``SchedulerError`` for SQLite's error ``e`` on the store at ``path``: what is wrong and
    what to do. ``StoreUnavailable`` (retryable) for a full disk, an I/O error, a read-only file
    or a lock; ``StoreDamaged`` for a corrupt file; a plain ``SchedulerError`` otherwise."""
    name = str(getattr(e, "sqlite_errorname", "") or "")
    text = str(e)
    if name.startswith("SQLITE_FULL") or "is full" in text:
        folder = os.path.dirname(os.path.abspath(path))
        return StoreUnavailable(f"the job store {path} cannot grow: the disk holding {folder} is full ({text}); "
                                f"free some space there {_ELSEWHERE}")
    if name.startswith("SQLITE_IOERR") or "I/O error" in text:
        cap = _file_size_cap()
        if cap is not None and name.startswith("SQLITE_IOERR_WRITE"):
            # EFBIG looks like an I/O error to SQLite: say what the likelier cause is.
            return StoreUnavailable(f"the job store {path} could not be written ({name}): this process may write no "
                                    f"file larger than {cap:,} bytes (its file-size limit, `ulimit -f`), and the "
                                    f"store or its -wal file may have reached that; raise the limit {_ELSEWHERE}")
        return StoreUnavailable(f"the job store {path} hit a disk I/O error ({name or text}); check the disk "
                                f"(dmesg) {_ELSEWHERE}")
    if name.startswith(("SQLITE_READONLY", "SQLITE_PERM", "SQLITE_CANTOPEN", "SQLITE_AUTH")) or "readonly" in text:
        return StoreUnavailable(f"the job store {path} cannot be written ({text}): the file, its folder or its file "
                                f"system is read-only or not ours; make it writable {_ELSEWHERE}")
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "locked" in text or "busy" in text:
        return StoreBusy(f"the job store {path} is locked by another process ({text}); a stopped worker or "
                         "deployer holds it: resume or end that process")
    if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB", "SQLITE_FORMAT")) or "malformed" in text:
        return StoreDamaged(f"the job store {path} is damaged ({text}); move it away and start a new store "
                            f"(its results may be recovered with `sqlite3 {path} .recover`) {_ELSEWHERE}")
    return SchedulerError(f"the job store {path} failed: {type(e).__name__}: {text}")


def open_database(path: str, *, read_only: bool = False) -> StoreConnection:
    """A connection to the store at ``path`` (``":memory:"`` for a private one), created if new.

    WAL mode (readers never block the writer), ``synchronous = NORMAL`` (a power cut may lose the
    last commits, never corrupts the store). ``SchedulerError`` for a file that is not a store of
    this format, a folder that does not exist (only the per-user store's folder is created), or
    any fault of the file (``store_error``).

    ``read_only``: never write, not even the schema (listing a store on a read-only disk, or one
    that is full); the store must exist.
    """
    if path != ":memory:":
        _check_folder(path, read_only)
    try:
        if read_only and path != ":memory:":
            db = _open_read_only(path)
        else:
            db = sqlite3.connect(path, timeout=60.0, isolation_level=None, check_same_thread=False,
                                 factory=StoreConnection)
        db.store_path = path
        db.execute("PRAGMA busy_timeout = 60000")
        # A 512 KiB page cache, not SQLite's 2 MiB: the deployer reads a job's results once, in
        # order, and the pages stay in the OS's cache anyway; measured on 1M results, no change in
        # throughput and ~1 MB off the deploying process's peak (issue 11's memory target).
        db.execute("PRAGMA cache_size = -512")
        if read_only:
            _check_version(db, path, read_only=True)
            return db
        current = False  # a private in-memory store is always new
        if path != ":memory:":
            current = _check_version(db, path)  # before WAL mode, which would change another program's database
            mode = _wal(db)
            if str(mode).lower() != "wal":
                raise SchedulerError(f"{path}: SQLite refused WAL mode ({mode}); put the store on a local disk")
        db.execute("PRAGMA synchronous = NORMAL")
        if current:
            return db  # no write: a stopped process holding the write lock does not hold up the open
        begin_immediate(db, path)
        try:
            _check_version(db, path)
            for stmt in _DDL.split(";"):
                if stmt.strip():
                    db.execute(stmt)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            db.execute(f"PRAGMA application_id = {APPLICATION_ID}")  # stores made before the mark get it now
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
    except StoreDamaged as e:
        raise StoreDamaged(f"{e.message}; is it a dcp-worktimes job store?") from None
    except sqlite3.DatabaseError as e:  # from connect itself
        raise store_error(e, path) from None
    return db


#: Every table and index the schema makes (a store that has them all, at this format, needs no DDL:
#: ``_check_version``).
_SCHEMA_NAMES = frozenset(re.findall(r"CREATE (?:TABLE|INDEX) IF NOT EXISTS (\w+)", _DDL))


def begin_immediate(db: StoreConnection, path: str) -> None:
    """``BEGIN IMMEDIATE``, waiting for as long as another process holds the write lock (a
    SIGSTOPped worker, a Ctrl-Z), saying so every busy timeout (60 s) instead of failing."""
    waited = 0.0
    while True:
        started = time.monotonic()
        try:
            db.execute("BEGIN IMMEDIATE")
            return
        except StoreBusy:
            waited += time.monotonic() - started
            log.warning("the job store %s has been locked by another process for %.0f s (a stopped worker or "
                        "deployer?); still waiting", path, waited)


def _wal(db: StoreConnection) -> str:
    """Switch a new store to WAL mode. The switch takes the file for itself, and SQLite answers
    "database is locked" at once, without its busy timeout, while another process or thread makes
    the same new store: try again for a while."""
    deadline = time.monotonic() + 60.0
    while True:
        try:
            return str(db.execute("PRAGMA journal_mode = WAL").fetchone()[0])
        except StoreBusy:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _check_folder(path: str, read_only: bool) -> None:
    from ..base import default_store_path

    if os.path.isdir(path) or path.endswith(os.sep):
        raise SchedulerError(f"the job store {path} is a folder, not a file; name a file in it, such as "
                             f"sqlite:///{os.path.join(os.path.abspath(path), 'jobs.db')}")
    if os.path.exists(path) and not os.path.isfile(path):
        raise SchedulerError(f"the job store {path} is not a regular file (a device or a pipe); name a file, such as "
                             "sqlite:///path/to/jobs.db")
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(folder):
        return
    if read_only or os.path.abspath(path) != os.path.abspath(default_store_path()):
        # A typo in a store URL must not quietly make folders (and a store nobody else uses).
        raise SchedulerError(f"the folder of the job store {path} does not exist ({folder}); create it first "
                             "(mkdir -p) or fix the path in --scheduler / DCP_SCHEDULER")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise SchedulerError(f"cannot create the folder of the job store {folder}: {e.strerror}; choose another "
                             "store with DCP_SCHEDULER=sqlite:///path.db") from None


def _open_read_only(path: str) -> StoreConnection:
    from urllib.parse import quote

    if not os.path.exists(path):
        raise SchedulerError(f"no job store at {path}")
    uri = f"file:{quote(os.path.abspath(path))}?mode=ro"
    db = sqlite3.connect(uri, uri=True, timeout=60.0, isolation_level=None, check_same_thread=False,
                         factory=StoreConnection)
    db.store_path = path
    try:
        db.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
    except StoreUnavailable:
        # A WAL store whose folder we cannot write (no -shm file to map): read it as it is on disk.
        db.close()
        db = sqlite3.connect(uri + "&immutable=1", uri=True, isolation_level=None, check_same_thread=False,
                             factory=StoreConnection)
        db.store_path = path
    return db


def _check_version(db: StoreConnection, path: str, read_only: bool = False) -> bool:
    """A store of this format, or an empty database to make one in (not when ``read_only``).
    Returns whether it is current: marked ours, at this format, with every table and index of the
    schema (it then needs no DDL, hence no write, to open)."""
    # The tables first: a process making the store commits them with the format number, so
    # tables seen before it commits come with its number read after (never "tables, no number").
    rows = db.execute("SELECT name, type FROM sqlite_master WHERE type IN ('table', 'index') AND name NOT LIKE "
                      "'sqlite_%' ORDER BY name").fetchall()
    tables = [name for name, kind in rows if kind == "table"]
    version = db.execute("PRAGMA user_version").fetchone()[0]
    mark = db.execute("PRAGMA application_id").fetchone()[0]
    # Ours: marked; made before the mark, with this format's tables, or (an older format) a jobs
    # table; or new (nothing in it). Many programs set user_version: it alone tells nothing.
    if mark == APPLICATION_ID:
        ours = True
    elif mark:
        ours = False
    elif version == SCHEMA_VERSION:
        ours = _OUR_TABLES <= set(tables)
    elif version:
        ours = "jobs" in tables
    else:
        ours = not tables
    if not ours:  # another program's database: never add our tables to it
        shown = ", ".join(tables[:5]) + (", ..." if len(tables) > 5 else "")
        raise SchedulerError(f"{path} is a SQLite database, but not a dcp-worktimes job store (it has the tables "
                             f"{shown or '(none)'}); name another file with --scheduler / "
                             "DCP_SCHEDULER=sqlite:///path/jobs.db")
    if version not in (0, SCHEMA_VERSION):
        raise SchedulerError(
            f"{path} was written by another version of dcp-worktimes (store format {version}, this one reads "
            f"{SCHEMA_VERSION}); move it away or choose another store with DCP_SCHEDULER=sqlite:///path.db")
    if version:
        return mark == APPLICATION_ID and _SCHEMA_NAMES <= {name for name, _kind in rows}
    if read_only:
        if path == ":memory:":
            raise SchedulerError("sqlite:///:memory: is a private store inside one process: there is nothing here to "
                                 "read; name the store file the deployer and workers use")
        raise SchedulerError(f"no job store at {path} yet: the file is empty (a store is made by the first deployer "
                             "or worker that opens it)")
    return False


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
        begin_immediate(self.db, self.path)

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            if self.outer:
                if exc_type is None:
                    try:
                        self.db.execute("COMMIT")
                    except SchedulerError:  # a full disk at COMMIT: undo, so the next transaction can start
                        self._rollback()
                        raise
                else:
                    self._rollback()
        finally:
            self.lock.release()

    def _rollback(self) -> None:
        # SQLite may already have rolled back by itself (after SQLITE_FULL or an I/O error); a
        # failing ROLLBACK must not hide the error that made us roll back.
        if self.db.in_transaction:
            try:
                self.db.execute("ROLLBACK")
            except SchedulerError:
                pass
