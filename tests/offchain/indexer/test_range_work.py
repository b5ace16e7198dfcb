"""While ranges are processed the indexer pauses the cyclic garbage collector and shortens
the interpreter's switch interval, for the whole process: both come back as they were
once no range is being processed, and what someone else set is left as they set it."""

from __future__ import annotations

import gc
import sys
import threading
from collections.abc import Iterator

import pytest

from offchain.indexer.indexer import _SWITCH_INTERVAL_S, _RangeWork


@pytest.fixture(autouse=True)
def _restore_process() -> Iterator[None]:
    interval, enabled = sys.getswitchinterval(), gc.isenabled()
    yield
    sys.setswitchinterval(interval)
    (gc.enable if enabled else gc.disable)()


def test_set_while_any_range_is_processed_and_put_back_after() -> None:
    sys.setswitchinterval(0.005)
    gc.enable()
    work = _RangeWork()
    entered, leave = threading.Event(), threading.Event()

    def other_thread() -> None:
        with work():
            entered.set()
            leave.wait(10)

    thread = threading.Thread(target=other_thread)
    with work():
        assert not gc.isenabled()
        assert sys.getswitchinterval() == pytest.approx(_SWITCH_INTERVAL_S)
        thread.start()
        assert entered.wait(10)
    # One holder left: still set.
    assert not gc.isenabled()
    assert sys.getswitchinterval() == pytest.approx(_SWITCH_INTERVAL_S)
    leave.set()
    thread.join(10)
    assert gc.isenabled()
    assert sys.getswitchinterval() == pytest.approx(0.005)


def test_leaves_what_others_set_as_they_set_it() -> None:
    work = _RangeWork()
    gc.disable()  # disabled by someone else: stays disabled
    sys.setswitchinterval(0.0002)  # shorter already: not lengthened
    with work():
        assert sys.getswitchinterval() == pytest.approx(0.0002)
    assert not gc.isenabled()
    assert sys.getswitchinterval() == pytest.approx(0.0002)

    gc.enable()
    sys.setswitchinterval(0.005)
    with work():
        sys.setswitchinterval(0.01)  # changed meanwhile: kept
    assert sys.getswitchinterval() == pytest.approx(0.01)
    assert gc.isenabled()
