"""Between the core's sessions and LUO's image in KHO (spec/kho.md §3, uapi.md §17).

Outgoing: the sessions a reboot carries become a LuoImage in creation order, files in
preservation order. Incoming: the image becomes sessions again, each file bound to
the handler whose compatible string it names. Formats and validation of the bytes
themselves are kho's; this is only the mapping.
"""

from __future__ import annotations

from typing import Any, Mapping

from kho import LuoImage, SessionImage

from ..uapi import errnos
from .errors import LuoError
from .handler import HandlerRegistry
from .luo import CarriedSession
from .session import Direction, PreservedFile, Session


def luo_image(number: int, carried: list[CarriedSession],
              subsystems: dict[str, int] | None = None) -> LuoImage:
    # CarriedFile has FileImage's attributes (compatible, data, token): kho reads them,
    # so a reboot of 100,000 files builds no second object per file.
    return LuoImage(
        liveupdate_number=number,
        sessions=[SessionImage(s.name, list(s.files)) for s in carried],
        flbs=[],
        subsystems=dict(subsystems or {}),
    )


def incoming_sessions(image: LuoImage, handlers: HandlerRegistry,
                      handed: Mapping[str, Mapping[int, Any]] | None = None) -> list[Session]:
    """Rebuild incoming sessions; a file no handler knows makes the whole set fail (EIO).
    `handed`: what the previous kernel handed over for each file, by compatible and data
    handle; it becomes the file's private slot."""
    handed = handed or {}
    sessions = []
    for si in image.sessions:
        session = Session(si.name, Direction.INCOMING)
        for fi in si.files:
            handler = handlers.by_compatible(fi.compatible)
            if handler is None:
                raise LuoError(errnos.EIO, f"session {si.name!r} token {fi.token:#x}: "
                                           f"no handler for {fi.compatible!r}")
            if fi.token in session.files:
                raise LuoError(errnos.EIO, f"session {si.name!r}: token {fi.token:#x} twice")
            session.files[fi.token] = PreservedFile(
                fi.token, handler, fi.data, private=handed.get(fi.compatible, {}).get(fi.data))
        sessions.append(session)
    return sessions
