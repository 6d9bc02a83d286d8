"""ioctl request numbers as the kernel encodes them (asm-generic/ioctl.h).

The LUO commands are all `_IO(0xBA, nr)`: no direction and no size bits, because
every argument struct starts with its own `size` field (the iommufd convention).
The other encoders are here so tests and the RFC v2 profile can build the
"wrong" encodings a confused program might use.
"""

NRBITS, TYPEBITS, SIZEBITS = 8, 8, 14
NRSHIFT = 0
TYPESHIFT = NRSHIFT + NRBITS
SIZESHIFT = TYPESHIFT + TYPEBITS
DIRSHIFT = SIZESHIFT + SIZEBITS

IOC_NONE, IOC_WRITE, IOC_READ = 0, 1, 2

LIVEUPDATE_IOCTL_TYPE = 0xBA


def IOC(direction: int, type_: int, nr: int, size: int) -> int:
    return (direction << DIRSHIFT) | (type_ << TYPESHIFT) | (nr << NRSHIFT) | (size << SIZESHIFT)


def IO(type_: int, nr: int) -> int:
    return IOC(IOC_NONE, type_, nr, 0)


def IOR(type_: int, nr: int, size: int) -> int:
    return IOC(IOC_READ, type_, nr, size)


def IOW(type_: int, nr: int, size: int) -> int:
    return IOC(IOC_WRITE, type_, nr, size)


def IOWR(type_: int, nr: int, size: int) -> int:
    return IOC(IOC_READ | IOC_WRITE, type_, nr, size)


def ioc_nr(cmd: int) -> int:
    return (cmd >> NRSHIFT) & ((1 << NRBITS) - 1)


def ioc_type(cmd: int) -> int:
    return (cmd >> TYPESHIFT) & ((1 << TYPEBITS) - 1)


def ioc_size(cmd: int) -> int:
    return (cmd >> SIZESHIFT) & ((1 << SIZEBITS) - 1)


def ioc_dir(cmd: int) -> int:
    return cmd >> DIRSHIFT


# Mainline (G2) command numbers, spec/uapi.md §2.
LIVEUPDATE_CMD_CREATE_SESSION = 0x00
LIVEUPDATE_CMD_RETRIEVE_SESSION = 0x01
LIVEUPDATE_CMD_SESSION_PRESERVE_FD = 0x40
LIVEUPDATE_CMD_SESSION_RETRIEVE_FD = 0x41
LIVEUPDATE_CMD_SESSION_FINISH = 0x42
LIVEUPDATE_CMD_SESSION_GET_NAME = 0x43

LIVEUPDATE_IOCTL_CREATE_SESSION = IO(LIVEUPDATE_IOCTL_TYPE, LIVEUPDATE_CMD_CREATE_SESSION)
LIVEUPDATE_IOCTL_RETRIEVE_SESSION = IO(LIVEUPDATE_IOCTL_TYPE, LIVEUPDATE_CMD_RETRIEVE_SESSION)
LIVEUPDATE_SESSION_PRESERVE_FD = IO(LIVEUPDATE_IOCTL_TYPE, LIVEUPDATE_CMD_SESSION_PRESERVE_FD)
LIVEUPDATE_SESSION_RETRIEVE_FD = IO(LIVEUPDATE_IOCTL_TYPE, LIVEUPDATE_CMD_SESSION_RETRIEVE_FD)
LIVEUPDATE_SESSION_FINISH = IO(LIVEUPDATE_IOCTL_TYPE, LIVEUPDATE_CMD_SESSION_FINISH)
LIVEUPDATE_SESSION_GET_NAME = IO(LIVEUPDATE_IOCTL_TYPE, LIVEUPDATE_CMD_SESSION_GET_NAME)

LIVEUPDATE_SESSION_NAME_LENGTH = 64
