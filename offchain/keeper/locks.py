"""Which keeper works on which transactions.

A key's transactions are its keeper's: one process per key, kept so by a lock (on
PostgreSQL an advisory lock per key; on SQLite one keeper at all, there being no row locks
to share the work with). When a key is retired — the operator rotates it, or a keeper of
several is decommissioned — transactions it recorded may be left unresolved, and they hold
their subscriptions: nobody would charge those again. A running keeper therefore settles the
transactions of any key whose keeper is not running (its lock is free), holding that lock
meanwhile so that the key's own keeper, started again, waits its turn."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

from sqlalchemy import Engine

from offchain.ha import LeaderLock

# Called with a key's address (lower case): inside, True when that key's keeper is not
# running and stays so until the block ends.
SenderIdle = Callable[[str], AbstractContextManager[bool]]


def keeper_lock(engine: Engine, chain_id: int, sender: str) -> LeaderLock:
    """The lock a keeper holds while it runs with `sender`'s key."""
    scope = sender if engine.dialect.name == "postgresql" else "all"
    return LeaderLock(engine, f"chainbill-keeper:{chain_id}:{scope}")


def idle_senders(engine: Engine, chain_id: int) -> SenderIdle:
    """For a keeper that holds its own lock: whether another key's keeper is not running.
    On PostgreSQL that key's lock is taken if it is free, and kept for the block; on SQLite
    the caller's lock is the only one (one keeper at all), so no other keeper runs."""

    @contextmanager
    def idle(sender: str) -> Iterator[bool]:
        if engine.dialect.name != "postgresql":
            yield True
            return
        lock = keeper_lock(engine, chain_id, sender)
        if not lock.try_acquire():
            yield False
            return
        try:
            yield True
        finally:
            lock.release()

    return idle
