"""PRESERVE_FD allocates a memfd's missing pages, and only those: a file whose pages all
exist is not walked again (luofs/handlers/memfd.py, issue 15)."""

import os

import pytest

from luofs.fdutil import OwnedFile
from luofs.handlers import memfd
from luofs.handlers.memfd import MemfdHandler

MiB = 1 << 20
FALLOCATE = os.posix_fallocate  # the real one, whatever a fixture records


@pytest.fixture
def fallocations(monkeypatch):
    calls = []

    def recording(fd, offset, length):
        calls.append((offset, length))
        FALLOCATE(fd, offset, length)

    monkeypatch.setattr(memfd.os, "posix_fallocate", recording)
    return calls


def preserve(fd):
    MemfdHandler().preserve(OwnedFile(fd))
    return os.fstat(fd).st_blocks * 512


@pytest.mark.parametrize("written", [0, MiB // 2, 4 * MiB - 4096])
def test_holes_are_filled(fallocations, written):
    fd = os.memfd_create("holes")
    try:
        os.ftruncate(fd, 4 * MiB)
        os.pwrite(fd, b"x" * written, 0)
        assert preserve(fd) >= 4 * MiB
        assert fallocations == [(0, 4 * MiB)]
    finally:
        os.close(fd)


@pytest.mark.parametrize("size", [4 * MiB, 4 * MiB + 1])  # a partial last page counts whole
def test_a_file_whose_pages_all_exist_is_not_walked(fallocations, size):
    fd = os.memfd_create("full")
    try:
        os.ftruncate(fd, size)
        FALLOCATE(fd, 0, size)  # pages exist, never written: as after a preserve
        assert preserve(fd) >= size
        os.pwrite(fd, b"y" * size, 0)
        assert preserve(fd) >= size
        assert fallocations == []
    finally:
        os.close(fd)


def test_an_empty_file_needs_nothing(fallocations):
    fd = os.memfd_create("empty")
    try:
        assert preserve(fd) == 0 and fallocations == []
    finally:
        os.close(fd)
