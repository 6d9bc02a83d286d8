"""A client process for the system test: runs one JSON command per stdin line, answers
one JSON line on stdout. It holds its own sessions and, at times, the device."""

import errno
import hashlib
import json
import os
import sys

from luofs.client import LiveUpdate

root = sys.argv[1]
sessions = {}
device = None


def content(seed: int) -> bytes:
    return hashlib.sha256(seed.to_bytes(8, "little")).digest() * (1 + seed % 7)


def run(cmd: dict):
    global device
    op = cmd["op"]
    if op == "hold":
        device = LiveUpdate(root)
    elif op == "release":
        device.close()
        device = None
    elif op in ("create", "retrieve"):
        lu = device or LiveUpdate(root)
        try:
            s = (lu.create_session if op == "create" else lu.retrieve_session)(cmd["name"])
        finally:
            if lu is not device:
                lu.close()
        sessions[cmd["handle"]] = s
    elif op == "preserve":
        fd = os.memfd_create("m")
        os.write(fd, content(cmd["seed"]))
        try:
            sessions[cmd["handle"]].preserve_fd(fd, cmd["token"])
        finally:
            os.close(fd)
    elif op == "retrieve_fd":
        fd = sessions[cmd["handle"]].retrieve_fd(cmd["token"])
        data = os.pread(fd, 1 << 20, 0)
        os.close(fd)
        return hashlib.sha256(data).hexdigest()
    elif op == "finish":
        sessions[cmd["handle"]].finish()
    elif op == "close":
        sessions.pop(cmd["handle"]).close()
    elif op == "forget":  # after a kexec: the fds are dead; closing them must be harmless
        for s in sessions.values():
            s.close()
        sessions.clear()
        if device is not None:
            device.close()
            device = None
    return None


for line in sys.stdin:
    try:
        result = {"ok": True, "value": run(json.loads(line))}
    except OSError as e:
        result = {"ok": False, "errno": errno.errorcode.get(e.errno, str(e.errno))}
    print(json.dumps(result), flush=True)
