"""One active indexer per chain: a PostgreSQL advisory lock held for the process's life.

A second instance waits as a standby and takes over as soon as the first one's connection
goes away (the server releases the lock when the holder dies). SQLite is a single-machine
database: there a lock file next to it plays the same part.
"""

from __future__ import annotations

import fcntl
import hashlib
import threading
from pathlib import Path
from typing import IO, Any

from sqlalchemy import Engine, text


def _lock_key(name: str) -> int:
    digest = hashlib.sha256(name.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class LeaderLock:
    def __init__(self, engine: Engine, name: str) -> None:
        self._engine = engine
        self._name = name
        self._connection: Any = None
        self._file: IO[bytes] | None = None

    def try_acquire(self) -> bool:
        if self._engine.dialect.name == "postgresql":
            connection = self._engine.connect()
            got = bool(
                connection.execute(
                    text("SELECT pg_try_advisory_lock(:k)"), {"k": _lock_key(self._name)}
                ).scalar()
            )
            connection.commit()
            if got:
                self._connection = connection
            else:
                connection.close()
            return got
        database = self._engine.url.database or ":memory:"
        path = Path(f"{database}.{self._name.replace(':', '-')}.lock")
        handle = path.open("wb")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        self._file = handle
        return True

    def acquire(self, stop: threading.Event, poll: float = 1.0, on_wait: Any = None) -> bool:
        """Blocks until this process leads (True) or `stop` is set (False)."""
        waited = False
        while not stop.is_set():
            if self.try_acquire():
                return True
            if not waited and on_wait is not None:
                on_wait()
            waited = True
            stop.wait(poll)
        return False

    def still_held(self) -> bool:
        """Whether the lock is still ours: on PostgreSQL its session must be alive and hold it
        (a terminated backend, a failover or an idle time-out takes it away)."""
        if self._connection is None:
            return self._file is not None
        try:
            held = self._connection.execute(
                text(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                    "AND pid = pg_backend_pid()"
                )
            ).scalar()
            self._connection.commit()
        except Exception:
            return False
        return bool(held)

    def release(self) -> None:
        if self._connection is not None:
            # Unlock explicitly: closing only returns the session to the pool, lock and all.
            try:
                self._connection.execute(
                    text("SELECT pg_advisory_unlock(:k)"), {"k": _lock_key(self._name)}
                )
                self._connection.commit()
            except Exception:
                self._connection.invalidate()  # a dead session holds nothing
            self._connection.close()
            self._connection = None
        if self._file is not None:
            self._file.close()
            self._file = None
