"""The loaded next kernel's command line (luofs/kexec_image.py)."""

import errno

import pytest

from luofs.kexec_image import COMMAND_LINE_SIZE, ImageError, LoadedImage, check_cmdline
from luofs.protocol_kernel import KernelConfig

RUNNING = KernelConfig(cmdline="liveupdate=on kho=on", debugfs=True)


def test_a_kexec_boots_the_given_then_the_loaded_then_the_running_command_line():
    image = LoadedImage()
    assert image.next_config(RUNNING) is RUNNING
    image.load("luo_stage=2")
    assert image.status() == {"loaded": True, "cmdline": "luo_stage=2"}
    assert image.next_config(RUNNING) == KernelConfig(cmdline="luo_stage=2", debugfs=True)
    assert image.next_config(RUNNING, "given=1").cmdline == "given=1"
    image.load(None)  # kexec_load: the running kernel's command line
    assert image.next_config(RUNNING) is RUNNING
    image.unload()
    assert image.status() == {"loaded": False, "cmdline": None}
    assert RUNNING.cmdline == "liveupdate=on kho=on"  # never edited in place


@pytest.mark.parametrize("bad", ["a\0b", "x" * COMMAND_LINE_SIZE, 7])
def test_a_command_line_the_kernel_would_refuse_is_einval_and_changes_nothing(bad):
    image = LoadedImage()
    image.load("kept=1")
    with pytest.raises(ImageError) as e:
        image.load(bad)
    assert e.value.errno == errno.EINVAL
    assert image.status() == {"loaded": True, "cmdline": "kept=1"}
    with pytest.raises(ImageError):
        image.next_config(RUNNING, bad)


def test_the_longest_command_line_fits_with_its_nul():
    assert check_cmdline("x" * (COMMAND_LINE_SIZE - 1)) == "x" * (COMMAND_LINE_SIZE - 1)
