"""Session names as directory entries: any byte string becomes a safe, reversible name.

Names come from user space (1..63 arbitrary non-NUL bytes). Only [A-Za-z0-9_+-.] pass
through; everything else, a leading dot, and '%' itself become %HH. So '/', '..',
control bytes and non-UTF-8 can never escape or corrupt the tree.
"""

_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_+-.")


def escape_name(name: bytes) -> bytes:
    out = bytearray()
    for i, b in enumerate(name):
        if b in _SAFE and not (i == 0 and b == 0x2E):
            out.append(b)
        else:
            out += b"%%%02X" % b
    return bytes(out)
