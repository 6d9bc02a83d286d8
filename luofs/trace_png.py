"""A live update's trace as a PNG timeline (matplotlib, the `png` extra).

One lane per process thread and nesting depth, processes top to bottom as in Perfetto
(the machine, the kernels by number, keepers, VMMs); spans are bars coloured by
category and named where they are wide enough, instants are ticks, the blackout is
shaded across every lane. Time is in milliseconds from the start of the blackout.
Unhappy path: without matplotlib, PngUnavailable says how to get it.
"""

from __future__ import annotations

from .trace_view import processes

COLOURS = {"machine": "#4e79a7", "kernel": "#f28e2b", "luo": "#e15759", "kho": "#76b7b2",
           "memfd": "#59a14f", "keeper": "#edc948", "device": "#b07aa1",
           "participant": "#ff9da7", "vmm": "#9c755f"}
OTHER = "#bab0ac"


class PngUnavailable(Exception):
    pass


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise PngUnavailable("the PNG needs matplotlib: pip install 'luofs[png]' "
                             "(or matplotlib); the JSON needs nothing") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _lanes(events: list[dict]) -> tuple[list[tuple[int, int, int]], dict[int, tuple]]:
    """Lanes (pid, tid, depth) in display order, and each event's lane (by id)."""
    order = {pid: i for i, pid in enumerate(processes(events))}
    lane_of: dict[int, tuple] = {}
    by_thread: dict[tuple, list[dict]] = {}
    for e in events:
        by_thread.setdefault((e["pid"], e.get("tid", e["pid"])), []).append(e)
    for key, group in by_thread.items():
        open_ends: list[int] = []  # end of the span open at each depth
        for e in sorted(group, key=lambda e: (e["ts"], -e.get("dur", 0))):
            while open_ends and open_ends[-1] <= e["ts"] and not (
                    e["ph"] == "i" and open_ends[-1] == e["ts"]):
                open_ends.pop()
            lane_of[id(e)] = (*key, len(open_ends))
            if e["ph"] == "X":
                open_ends.append(e["ts"] + e["dur"])
    lanes = sorted(set(lane_of.values()), key=lambda lane: (order[lane[0]], lane[1] != lane[0],
                                                            lane[1], lane[2]))
    return lanes, lane_of


def render(events: list[dict], path: str, update: int | None = None) -> None:
    """The whole update above; below, when the blackout is a small part of it, the
    blackout alone, magnified."""
    plt = _pyplot()
    blackout = next((e for e in events if e["name"] == "blackout" and e.get("proc") == "machine"),
                    None)
    zero = blackout["ts"] if blackout else min(e["ts"] for e in events)
    lanes, lane_of = _lanes(events)
    start = (min(e["ts"] for e in events) - zero) / 1e6
    end = (max(e["ts"] + e.get("dur", 0) for e in events) - zero) / 1e6
    views = [(start, end, "the whole update")]
    if blackout is not None and blackout["dur"] / 1e6 < 0.5 * (end - start):
        margin = blackout["dur"] / 1e6 * 0.04
        views.append((-margin, blackout["dur"] / 1e6 + margin, "the blackout"))
    height = 0.8 + 0.22 * len(lanes)
    fig, axes = plt.subplots(len(views), 1, figsize=(12, 0.6 + height * len(views)),
                             squeeze=False)
    for ax, (left, right, what) in zip(axes[:, 0], views):
        _draw(ax, events, lanes, lane_of, zero, left, right, blackout)
        ax.set_xlabel(f"ms from the start of the blackout (shaded): {what}", fontsize=8)
    title = "luofs live update" + (f" to kernel #{update}" if update is not None else "")
    if blackout is not None:
        title += f": blackout {blackout['dur'] / 1e6:.1f} ms"
    axes[0, 0].set_title(title, fontsize=10)
    shown = sorted({e.get("cat", "") for e in events if e["ph"] == "X"} & set(COLOURS))
    fig.legend(handles=[plt.Rectangle((0, 0), 1, 1, color=COLOURS[c]) for c in shown],
               labels=shown, fontsize=7, loc="lower center", ncol=len(shown) or 1,
               frameon=False)
    fig.tight_layout(rect=(0, 0.035, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _draw(ax, events, lanes, lane_of, zero: int, left: float, right: float, blackout) -> None:
    row = {lane: i for i, lane in enumerate(lanes)}
    width_ms = max(right - left, 1e-3)
    if blackout is not None:
        ax.axvspan(0, blackout["dur"] / 1e6, color="#000000", alpha=0.07, lw=0)
    instants = 0
    for e in sorted(events, key=lambda e: e["ts"]):
        y = row[lane_of[id(e)]]
        x = (e["ts"] - zero) / 1e6
        if e["ph"] == "i":
            if left <= x <= right:
                ax.plot([x], [y], marker="|", markersize=10, color="#222222")
                ax.annotate(e["name"], (x, y), xytext=(3, 5 if instants % 2 else -9),
                            textcoords="offset points", fontsize=6.5, color="#222222")
                instants += 1
            continue
        width = e["dur"] / 1e6
        ax.barh(y, width, left=x, height=0.8, color=COLOURS.get(e.get("cat", ""), OTHER),
                edgecolor="white", linewidth=0.3)
        shown = min(x + width, right) - max(x, left)
        if shown > width_ms * 0.05:
            ax.text(max(x, left) + shown / 2, y, e["name"], ha="center", va="center",
                    fontsize=6.5, clip_on=True)
    ax.set_yticks(range(len(lanes)), _labels(events, lanes), fontsize=7.5)
    ax.set_ylim(len(lanes) - 0.4, -0.6)
    ax.set_xlim(left, right)
    ax.grid(True, axis="x", alpha=0.3)


def _labels(events: list[dict], lanes) -> list[str]:
    names = processes(events)
    threads = {(e["pid"], e.get("tid")): e["thread"] for e in events if "thread" in e}
    labels = []
    for pid, tid, depth in lanes:
        label = "" if depth else names[pid]
        if not depth and tid != pid and threads.get((pid, tid)):
            label += f" · {threads[(pid, tid)]}"
        labels.append(label[:34])
    return labels
