"""One picture: live-update blackout against preserved bytes (log scale), with min–max."""

from __future__ import annotations


def blackout_png(rows, path: str) -> bool:
    """Draw the `kexec blackout, <size> preserved` rows; False if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    units = {"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}
    points = []
    for r in rows:
        if r.name.startswith("kexec blackout, ") and r.name.endswith(" preserved"):
            amount, unit = r.name.split(", ")[1].split()[:2]
            points.append((int(amount) * units[unit], r.median, r.min, r.max))
    points.sort()
    xs = [p[0] for p in points]
    fig, ax = plt.subplots(figsize=(6.4, 4))
    ax.errorbar(xs, [p[1] for p in points],
                yerr=[[p[1] - p[2] for p in points], [p[3] - p[1] for p in points]],
                fmt="o-", capsize=4, label="median (min–max)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(xs, [_label(x) for x in xs])
    ax.set_ylim(bottom=0)
    ax.set_xlabel("bytes preserved in memfds")
    ax.set_ylabel("blackout (ms): freeze → next kernel serving")
    ax.set_title("luofs kexec: blackout against preserved bytes")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _label(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n // size} {unit}"
    return f"{n} B"
