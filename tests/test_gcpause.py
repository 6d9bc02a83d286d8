"""luofs.gcpause: the collector waits during a live update, and does not walk what it built."""

import gc

from luofs.gcpause import gc_paused


def test_collection_waits_and_what_was_built_is_frozen():
    assert gc.isenabled()
    with gc_paused():
        assert not gc.isenabled()
        built = [[] for _ in range(1000)]
    assert gc.isenabled()
    assert gc.get_freeze_count() >= len(built)
    gc.unfreeze()


def test_a_collector_that_was_off_stays_off():
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
        gc.unfreeze()
