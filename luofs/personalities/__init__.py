"""The ABIs a luofs kernel can speak, one module each, and the one list of them.

DOC: A *personality* is what makes a kernel process mainline, RFC v1 or RFC v2: which
device node and sysfs files it serves, how it freezes into a HandOver and how it is
rebuilt from one, and what `luofs status` shows of it (see `base.Personality`).

Adding one is a module with a `Personality` subclass and one line in `_REGISTERED`
(or a `register()` call, as the tests do for a test-only personality). Names are
resolved lazily: `luofs boot --help` lists them without importing any of them.
"""

from __future__ import annotations

import importlib

# name -> "module:class"; the order is the one `--help` shows.
_REGISTERED: dict[str, str] = {
    "mainline": "luofs.personalities.mainline:Mainline",
    "rfc-v1": "luofs.personalities.rfc_v1:RfcV1",
    "rfc-v2": "luofs.personalities.rfc_v2:RfcV2",
}

DEFAULT = "mainline"


def names() -> tuple[str, ...]:
    return tuple(_REGISTERED)


def register(name: str, where: str) -> None:
    """Make `where` ("module:class") available as ABI `name`."""
    _REGISTERED[name] = where


def unregister(name: str) -> None:
    _REGISTERED.pop(name, None)


def load(name: str):
    """The Personality class for ABI `name`; ValueError if none is registered."""
    where = _REGISTERED.get(name)
    if where is None:
        raise ValueError(f"unknown ABI {name!r}; known: {', '.join(_REGISTERED)}")
    module, _, attr = where.partition(":")
    return getattr(importlib.import_module(module), attr)
