"""The one error a reader of handover data raises.

Everything the new kernel reads from the previous one is untrusted input: a
bug in the old kernel, a stale pointer or a flipped bit must surface as a
precise message, never as an IndexError deep inside a parser.  Every check in
this package therefore raises :class:`KhoFormatError` and says what was found
and what was expected.
"""


class KhoFormatError(ValueError):
    """Handover data (FDT, memory map, LUO blocks, records) is malformed."""
