import pytest

from luofs.unwind import do_all


def test_all_done_in_order_returns_results():
    seen = []
    assert do_all([1, 2, 3], lambda i: seen.append(i) or i * 10, lambda i, r: None) == [10, 20, 30]
    assert seen == [1, 2, 3]


def test_failure_undoes_the_done_ones_last_first_and_propagates():
    undone = []

    def do(i):
        if i == 3:
            raise ValueError("three")
        return i * 10

    with pytest.raises(ValueError, match="three"):
        do_all([1, 2, 3, 4], do, lambda i, r: undone.append((i, r)))
    assert undone == [(2, 20), (1, 10)]


def test_nothing_done_nothing_undone():
    undone = []
    with pytest.raises(KeyError):
        do_all([1], lambda i: {}[i], lambda i, r: undone.append(i))
    assert undone == []
