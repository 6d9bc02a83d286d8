"""One picture: the live-update blackout against preserved bytes, and where it goes.

Each size is a stacked bar of the median of the blackout's three parts as every
update's trace recorded them (luofs/trace.py; bench/kexec_blackout.py PARTS), with the
median blackout and its min–max drawn over it."""

from __future__ import annotations

import statistics

PART_LABELS = {"ask the old kernel to freeze": "old kernel freezes, sends the hand-over",
               "hand over": "old kernel unmounts (with devices: is killed)",
               "next kernel comes up": "next kernel: what is left of its rebuild, mount"}
COLOURS = ("#f28e2b", "#4e79a7", "#59a14f")


def blackout_png(rows, path: str, parts: dict[str, list[dict]] | None = None) -> bool:
    """Draw the `kexec blackout, <size> preserved` rows; False if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    sizes = [r for r in rows if r.name.startswith("kexec blackout, ")
             and r.name.endswith(" preserved")]
    labels = [r.name.split(", ")[1].removesuffix(" preserved") for r in sizes]
    xs = range(len(sizes))
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    bottoms = [0.0] * len(sizes)
    for (part, label), colour in zip(PART_LABELS.items(), COLOURS):
        heights = [statistics.median([p.get(part, 0.0) for p in parts[size]])
                   if parts and parts.get(size) else 0.0 for size in labels]
        if any(heights):
            ax.bar(xs, heights, bottom=bottoms, width=0.55, color=colour, label=label)
            bottoms = [b + h for b, h in zip(bottoms, heights)]
    ax.errorbar(xs, [r.median for r in sizes],
                yerr=[[r.median - r.min for r in sizes], [r.max - r.median for r in sizes]],
                fmt="o", color="black", capsize=4, label="blackout: median (min–max)")
    ax.set_xticks(list(xs), labels)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("bytes preserved in memfds")
    ax.set_ylabel("ms (medians of each part, from the traces)")
    ax.set_title("luofs kexec: the blackout against preserved bytes", fontsize=10)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2,
              frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
