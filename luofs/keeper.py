"""A file keeper: a tiny process that holds preserved files for a kernel process.

A kernel process holds every preserved file open, and its fd table is bounded by
RLIMIT_NOFILE. Past a threshold, files are parked here instead: the kernel sends the
file (SCM_RIGHTS) and keeps a slot number. At a live update the kernel hands over the
keeper's socket — one fd — instead of every file it holds. A keeper lives exactly as
long as some kernel holds its socket: the last close ends it and releases its files.

Requests (luofs.wire messages): park (fds in → slots), fetch (slots → fds, the same open
file descriptions), drop (slots), records (runs of slots → position, size and seals,
packed, each followed by the asker's pad bytes).
"""

from __future__ import annotations

import argparse
import array
import fcntl
import os
import socket
import struct
import sys

from . import limits, wire

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
    """native/keeper/records.c, if `make` built it: 2-3× faster, and a live update waits
    for these records."""
    path = os.environ.get("LUOFS_RECORDS_LIB") or os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        "native", "build", "libluofs-records.so")
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
    next_slot = 0
    while True:
        message, fds = wire.recv(sock)
        if message is None:
            break
        op = message.get("op")
        reply, out = {"ok": True}, []
        try:  # a bad request gets an error; it must never end the keeper and its files
            if op == "park":
                reply["slots"] = list(range(next_slot, next_slot + len(fds)))
                files.update(zip(reply["slots"], fds))
                next_slot += len(fds)
                fds = []
            elif op == "fetch":
                out = [files[slot] for slot in message["slots"]]
            elif op == "drop":
                for slot in message["slots"]:
                    fd = files.pop(slot, None)
                    if fd is not None:
                        os.close(fd)
            elif op == "records":
                reply["records"] = records([files[slot] for first, count in message["runs"]
                                            for slot in range(first, first + count)],
                                           bytes.fromhex(message.get("pad", ""))).hex()
            else:
                reply = {"ok": False, "error": f"unknown op {op!r}"}
        except (KeyError, OSError, TypeError, ValueError) as e:
            reply, out = {"ok": False, "error": f"{op}: {e!r}"}, []
        for fd in fds:
            os.close(fd)
        wire.send(sock, reply, out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="luofs-keeper", description=__doc__)
    p.add_argument("--fd", type=int, required=True)
    args = p.parse_args(argv)
    limits.raise_fd_limit()
    serve(socket.socket(fileno=args.fd), records_function())
    return 0


if __name__ == "__main__":
    sys.exit(main())
