"""A file keeper: a tiny process that holds preserved files for a kernel process.

A kernel process holds every preserved file open, and its fd table is bounded by
RLIMIT_NOFILE. Past a threshold, files are parked here instead: the kernel sends the
file (SCM_RIGHTS) and keeps a slot number. At a live update the kernel hands over the
keeper's socket — one fd — instead of every file it holds. A keeper lives exactly as
long as some kernel holds its socket: the last close ends it and releases its files.

Requests (luofs.protocol messages): Park (fds in → Parked slots), Fetch (slots → fds,
the same open file descriptions), Drop (slots), Records (runs of slots → position, size
and seals, packed, each followed by the asker's pad bytes). A request it cannot read or
carry out is answered with Error; the keeper and its files live on.
"""

from __future__ import annotations

import argparse
import array
import fcntl
import itertools
import os
import socket
import struct
import sys
import time

from . import limits, protocol
from .protocol import FILES, Error, Ok
from .protocol_keeper import Drop, Fetch, Fetched, Park, Parked, Records, RecordsReply

RECORD = struct.Struct("<QQI")  # file position, size, seals


def _seals(fd: int) -> int:
    try:
        return fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    except OSError:
        return 0


def _records_in_python(fds: list[int], pad: bytes = b"") -> bytes:
    packed = bytearray()
    for fd in fds:
        packed += RECORD.pack(os.lseek(fd, 0, os.SEEK_CUR), os.fstat(fd).st_size, _seals(fd))
        packed += pad
    return bytes(packed)


def _load_native():
    """native/keeper/records.c, if it was built (luofs/native.py): 2-3× faster, and a
    live update waits for these records."""
    from . import native

    path = native.path(native.RECORDS)
    if path == "none" or not os.path.exists(path):
        return None
    import ctypes

    lib = ctypes.CDLL(path)
    fn = lib.luofs_file_records
    fn.argtypes = [ctypes.POINTER(ctypes.c_int), ctypes.c_long, ctypes.c_char_p, ctypes.c_long,
                   ctypes.c_char_p, ctypes.POINTER(ctypes.c_long)]
    fn.restype = ctypes.c_int

    def native(fds: list[int], pad: bytes = b"") -> bytes:
        out = ctypes.create_string_buffer((RECORD.size + len(pad)) * len(fds))
        failed = ctypes.c_long(-1)
        packed = array.array("i", fds)
        pointer = (ctypes.c_int * len(fds)).from_buffer(packed) if fds else None
        err = fn(pointer, len(fds), pad, len(pad), out, ctypes.byref(failed))
        if err:
            raise OSError(-err, f"fd {fds[failed.value]}: {os.strerror(-err)}")
        return out.raw

    return native


def records_function():
    """How this keeper reads records: natively when it can. Chosen at start: loading
    ctypes during a live update would land in its blackout."""
    return _load_native() or _records_in_python


def serve(sock: socket.socket, records=_records_in_python) -> None:
    files: dict[int, int] = {}
    slots = itertools.count()
    while True:
        try:
            message, fds = protocol.recv(sock)
        except protocol.ProtocolError as e:  # answered; it must never end the keeper
            print(f"luofs-keeper[{os.getpid()}]: rejected a request: {e}", file=sys.stderr)
            protocol.send(sock, Error(f"bad request: {e}"))
            continue
        if message is None:
            break
        out: dict[str, list[int]] = {}
        try:  # a bad request gets an error; it must never end the keeper and its files
            if isinstance(message, Park):
                parked = fds.pop(FILES, [])
                reply = Parked(tuple(next(slots) for _ in parked))
                files.update(zip(reply.slots, parked))
            elif isinstance(message, Fetch):
                out, reply = {FILES: [files[slot] for slot in message.slots]}, Fetched()
            elif isinstance(message, Drop):
                for slot in message.slots:
                    fd = files.pop(slot, None)
                    if fd is not None:
                        os.close(fd)
                reply = Ok()
            elif isinstance(message, Records):
                started = time.monotonic_ns()  # the kernel's trace shows this keeper's part
                packed = records([files[slot] for first, count in message.runs
                                  for slot in range(first, first + count)], message.pad)
                reply = RecordsReply(packed, started, time.monotonic_ns())
            else:
                reply = Error(f"{message.TAG} is not a request a keeper takes")
        except (KeyError, OSError) as e:
            reply, out = Error(f"{message.TAG}: {e!r}"), {}
        protocol.close_fds(fds)
        protocol.send(sock, reply, out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="luofs-keeper", description=__doc__)
    p.add_argument("--fd", type=int, required=True)
    args = p.parse_args(argv)
    limits.raise_fd_limit()
    serve(socket.socket(fileno=args.fd), records_function())
    return 0


if __name__ == "__main__":
    sys.exit(main())
