"""A short soak: several live updates with paced DMA, every record and interrupt counted."""

from devices.soak import soak


def test_soak_loses_nothing():
    report = soak(kexecs=8, steady_s=0.01, blackout_s=0.005, memory=32 << 20)
    assert report.kexecs == 8
    assert report.records_written > 0
    assert report.lost == report.duplicated == report.seq_gaps == 0
    assert report.irq_lost == 0 and report.irq_consumed == report.irq_raised
    assert report.reclaim_failures == 0
    assert report.blackout_rate > 0  # DMA went on while no kernel ran
    assert report.unpreserved_written >= report.unpreserved_lost >= 0
