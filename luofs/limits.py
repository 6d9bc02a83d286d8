"""Process limits luofs needs: a kernel holds every preserved file open."""

import resource


def raise_fd_limit() -> int:
    """Raise RLIMIT_NOFILE as far as allowed (root: up to fs.nr_open); return the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    try:
        with open("/proc/sys/fs/nr_open") as f:
            target = max(hard, int(f.read()))
    except (OSError, ValueError):
        pass
    for limit in (target, hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
            return limit
        except (ValueError, OSError):
            continue
    return soft


def fd_limit() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
