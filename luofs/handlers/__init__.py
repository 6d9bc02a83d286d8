"""File handlers: one module per kind of file LUO can preserve."""

from .memfd import MemfdHandler

__all__ = ["MemfdHandler"]
