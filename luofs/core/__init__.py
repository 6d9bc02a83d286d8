"""The LUO core: rules without I/O (no pyfuse3, no trio)."""

from .caller import Caller
from .dispatch import MAINLINE_DEVICE, MAINLINE_SESSION, Command, CommandTable, Request, check
from .errors import LuoError
from .handler import FileHandler, HandlerRegistry
from .luo import CarriedFile, CarriedSession, Luo, Outcome, Rebooting, session_name
from .session import Direction, PreservedFile, Session

__all__ = [
    "Caller", "Command", "CommandTable", "Request", "check", "MAINLINE_DEVICE",
    "MAINLINE_SESSION", "LuoError", "FileHandler", "HandlerRegistry", "CarriedFile",
    "CarriedSession", "Luo", "Outcome", "Rebooting", "session_name", "Direction",
    "PreservedFile", "Session",
]
