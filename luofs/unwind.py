"""Do all, or undo in reverse: the one shape every multi-step callback path takes.

The kernel's LUO code unwinds a failed sequence of preserve/prepare/freeze calls in the
reverse order of setup; so do the core, the handlers and the device layer here. This is a
leaf (standard library only): `devices/` imports it without pulling in the LUO core.
"""

from __future__ import annotations

from typing import Callable, Iterable, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def do_all(items: Iterable[T], do: Callable[[T], R], undo: Callable[[T, R], object]) -> list[R]:
    """`do(item)` for every item in order and the results; if one raises, `undo(item,
    result)` for every item done so far, last first, then the error propagates.

    The failing item undoes its own part (as a kernel callback that fails must): it is
    not passed to `undo`. Errors raised by `undo` are not caught: an undo step must not
    fail, and if it does the caller should see that rather than a half-unwound state.
    """
    done: list[tuple[T, R]] = []
    try:
        for item in items:
            done.append((item, do(item)))
    except BaseException:
        for item, result in reversed(done):
            undo(item, result)
        raise
    return [result for _item, result in done]
