"""luofs/vm/accel.py: the override, the cache per host boot, no KVM without /dev/kvm."""

import pytest

from luofs.vm import accel


def test_the_environment_decides_when_set(monkeypatch):
    monkeypatch.setenv(accel.ENV, "kvm")
    assert accel.choose("/nonexistent/qemu") == "kvm"
    monkeypatch.setenv(accel.ENV, "hvf")
    with pytest.raises(ValueError, match=r"^\$LUOFS_VM_ACCEL must be kvm or tcg, not 'hvf'$"):
        accel.choose("/nonexistent/qemu")


def test_the_answer_is_kept_per_host_boot(monkeypatch, tmp_path):
    monkeypatch.delenv(accel.ENV, raising=False)
    monkeypatch.setattr(accel, "CACHE", str(tmp_path / "accel"))
    probes = []
    monkeypatch.setattr(accel, "kvm_runs_guests", lambda qemu: probes.append(qemu) or False)
    assert accel.choose("q") == "tcg" and accel.choose("q") == "tcg"
    assert probes == ["q"]
    (tmp_path / "accel").write_text("another-boot kvm\n")  # a cache from before a reboot
    assert accel.choose("q") == "tcg" and probes == ["q", "q"]


def test_no_usable_dev_kvm_means_no_probe(monkeypatch):
    monkeypatch.setattr(accel.os, "access", lambda path, mode: False)
    assert accel.kvm_runs_guests("/nonexistent/qemu") is False
