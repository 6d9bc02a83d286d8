"""`luofs trace` and the phase table `luofs kexec` prints: a live update's trace, read
from the instance's state dir (luofs/trace_view.py), as JSON for Perfetto or a PNG.

Unhappy paths (CliError, exit 1): no trace kept for ROOT (never updated, recording off
with LUOFS_TRACE=0, or the state dir removed by `luofs shutdown`), no such update, a
PNG asked for without matplotlib (checked before anything is written), a file that
cannot be written. The table after `luofs kexec` is left out, silently, when there is
no trace to read.
"""

from __future__ import annotations

import json
import sys

from .cli import CliError  # cli imports this module only from its subcommands


def cmd_trace(args, root: str) -> int:
    from . import trace_view, wire

    state = wire.state_dir(root)
    try:
        update, events = trace_view.read(state, args.update)
    except trace_view.TraceMissing as e:
        raise CliError(f"{e} (luofs records each `luofs kexec` unless LUOFS_TRACE=0)") from None
    except OSError as e:
        raise CliError(f"cannot read the trace: {e.strerror}") from None
    render = None
    if args.png:
        from . import trace_png

        try:
            trace_png._pyplot()
        except trace_png.PngUnavailable as e:
            raise CliError(str(e)) from None
        render = trace_png.render
    output = args.output or ("-" if not args.png else None)
    if output:
        text = json.dumps(trace_view.chrome(events, update), separators=(",", ":"))
        if output == "-":
            print(text)
        else:
            _write(output, text + "\n")
            print(f"luofs: update {update}: {len(events)} events in {output} (open it in "
                  "ui.perfetto.dev or chrome://tracing)", file=sys.stderr)
    if render is not None:
        try:
            render(events, args.png, update)
        except OSError as e:
            raise CliError(f"{args.png}: {e.strerror}") from None
        print(f"luofs: update {update}: timeline in {args.png}", file=sys.stderr)
    return 0


def _write(path: str, text: str) -> None:
    try:
        with open(path, "w") as f:
            f.write(text)
    except OSError as e:
        raise CliError(f"{path}: {e.strerror}") from None


def print_breakdown(root: str, update: int) -> None:
    """The main phases of `update`, after `luofs kexec`'s line (nothing without a trace)."""
    from . import trace_view, wire

    try:
        _update, events = trace_view.read(wire.state_dir(root), update)
    except (trace_view.TraceMissing, OSError):
        return
    rows = trace_view.breakdown(events)
    if rows:
        print(trace_view.table(rows))
        print(f"  (every phase: luofs trace --root {root} --update {update} -o FILE.json "
              "[--png FILE.png])")
    sys.stdout.flush()

