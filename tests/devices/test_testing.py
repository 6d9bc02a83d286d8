"""devices/testing.py: the record ledger that follows a device across kernels, and
wait_until."""

import pytest

from devices.testing import RecordLedger, wait_until


class Dev:
    def __init__(self, label, epoch):
        self.label = label
        self.driver_data = type("Channel", (), {"epoch": epoch})()


def test_the_ledger_counts_gaps_duplicates_and_epochs():
    ledger = RecordLedger()
    dma0 = Dev("dma0", 1)
    ledger.record(dma0, [0, 1, 2])
    ledger.record(dma0, [2, 5])  # 2 again, then 3 and 4 missing
    ledger.record(dma0, [])
    ledger.record(Dev("dma0", 2), [0, 1])  # a reset starts a new epoch
    assert ledger.received["dma0"] == 6
    assert ledger.duplicates["dma0"] == 1 and ledger.gaps["dma0"] == 2
    assert ledger.epochs("dma0") == {1: (0, 6), 2: (0, 2)}
    assert ledger.epochs("dma1") == {}


def test_wait_until_gives_up_with_an_assertion_error():
    wait_until(lambda: True, timeout=0.01)
    with pytest.raises(AssertionError, match=r"^condition not met within 0.01 s$"):
        wait_until(lambda: False, timeout=0.01, interval=0.001)
