"""Engines for SQLite and PostgreSQL that behave the same under several worker processes."""

from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url

#: How long a SQLite connection waits for a lock held by another process, in milliseconds.
SQLITE_BUSY_TIMEOUT_MS = 10_000

#: PostgreSQL connections an engine keeps open by default.
POOL_SIZE = 2

#: Connections an engine may open beyond :data:`POOL_SIZE` at a peak (closed when returned).
MAX_OVERFLOW = 2

#: Seconds a thread waits for a connection of a full pool before failing.
POOL_TIMEOUT = 30

#: Query parameter of a PostgreSQL URL that turns psycopg's prepared statements off
#: (``prepare_threshold=none``), as a pooler in transaction mode (PgBouncer) requires.
PREPARE_THRESHOLD = "prepare_threshold"


def normalize_url(url: str) -> str:
    """Map ``postgres://`` and ``postgresql://`` to the psycopg 3 driver."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def create_db_engine(
    url: str, *, pre_ping: bool = True, pool_size: int = POOL_SIZE, max_overflow: int = MAX_OVERFLOW
) -> Engine:
    """Create an engine for ``url``.

    SQLite gets WAL journaling, a busy timeout and ``synchronous=NORMAL`` so
    that many processes can write the audit trail at once; its folder is
    created if missing.  PostgreSQL uses psycopg 3 with pre-ping, so a
    connection cut by a restart is replaced instead of failing a write;
    ``pre_ping=False`` saves that round trip per checkout for callers that
    retry a failed write themselves.  Its pool holds ``pool_size`` connections
    and opens up to ``max_overflow`` more at a peak: an engine never has more
    than their sum open.  ``?prepare_threshold=none`` in the URL turns psycopg's
    prepared statements off (PgBouncer in transaction mode).
    """
    url = normalize_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(url, parsed.database)
    if parsed.get_backend_name() != "postgresql":
        raise ValueError(f"unsupported database {parsed.get_backend_name()!r}: use sqlite or postgresql")
    connect_args: dict[str, object] = {"connect_timeout": 5}
    threshold = parsed.query.get(PREPARE_THRESHOLD)
    if threshold is not None:
        parsed = parsed.difference_update_query([PREPARE_THRESHOLD])
        connect_args[PREPARE_THRESHOLD] = None if str(threshold).lower() == "none" else int(threshold)
    return create_engine(
        parsed,
        pool_pre_ping=pre_ping,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_timeout=POOL_TIMEOUT,
        connect_args=connect_args,
    )


def _sqlite_engine(url: str, database: str | None) -> Engine:
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False}
    )

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection, _record):
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    return engine


class SQLiteWriteLock:
    """The right to write a SQLite database, queued fairly across threads and processes.

    SQLite has one write lock per database, and a connection that finds it
    taken sleeps in its busy handler (1, 2, 5, 10 ... ms) while writers of
    other processes take it again and again: under load a process can wait
    tens of milliseconds for a write of a millisecond.  Taking this lock
    first (a ``threading.RLock``, then ``flock`` on ``<database>.write-lock``)
    puts the writers that use it in the kernel's queue instead, and a
    ``BEGIN IMMEDIATE`` after it seldom waits.  Reentrant; fork-safe (each
    process opens the file for itself).  On a database without a file it is
    the thread lock alone.

    Parameters:
      database(str|None): Path of the SQLite database file.
    """

    def __init__(self, database: str | None) -> None:
        self.path = f"{database}.write-lock" if database and database != ":memory:" else None
        self._thread_lock = threading.RLock()
        self._depth = 0
        self._fd: int | None = None
        self._pid = 0

    def __enter__(self) -> SQLiteWriteLock:
        self._thread_lock.acquire()
        try:
            if self._depth == 0 and self.path is not None:
                fcntl.flock(self._file(), fcntl.LOCK_EX)
        except BaseException:
            self._thread_lock.release()
            raise
        self._depth += 1
        return self

    def __exit__(self, *exc_info) -> None:
        self._depth -= 1
        try:
            if self._depth == 0 and self.path is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._thread_lock.release()

    def _file(self) -> int:
        if self._fd is None or self._pid != os.getpid():
            # A forked child must not share the parent's open file: flock is per open file.
            self._fd, self._pid = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644), os.getpid()
        return self._fd


def sqlite_write_lock(engine: Engine) -> SQLiteWriteLock | None:
    """The :class:`SQLiteWriteLock` of ``engine``'s database; None unless it is SQLite."""
    if engine.dialect.name != "sqlite":
        return None
    return SQLiteWriteLock(engine.url.database)
