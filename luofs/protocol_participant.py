"""The messages between the machine and its update participants (luofs/participants.py),
registered with luofs.protocol's one encoder and decoder. Each is answered by
protocol.Ok or protocol.Error (with the participant's errno, or 0).
"""

from .protocol import Message

__all__ = ["Prepare", "Cancel", "Resume", "PowerOff"]


class Prepare(Message, tag="participant-prepare"):
    """A live update is coming: get ready (a VMM stops its guests and saves them).
    `update`: the number of the kernel it starts, whose trace (luofs/trace.py) the
    participant may add its parts to; 0 when the instance records none. `pid`: the
    participant's own pid as the machine sees it (its row in the trace: a participant
    in a kernel's userspace knows only its pid in that PID namespace)."""

    update: int = 0
    pid: int = 0


class Cancel(Message, tag="participant-cancel"):
    """The update was refused: go on as before."""


class Resume(Message, tag="participant-resume"):
    """The next kernel serves: hand over to your successor there. `update` and `pid` as
    Prepare's."""

    update: int = 0
    pid: int = 0


class PowerOff(Message, tag="participant-power-off"):
    """The machine shuts down: end."""
