# luofs: `make demo` and `make test` set up everything they need on a fresh Debian machine.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
# musl-tools and golang-go build programs no LD_PRELOAD shim reaches (static musl, Go)
# for the seccomp supervisor's tests.
SYS_PACKAGES := fuse3 libfuse3-dev pkg-config gcc make device-tree-compiler musl-tools golang-go
# The stamp names the package list: adding a package makes every checkout check again.
SYS_STAMP := .stamp-sys-$(shell echo $(SYS_PACKAGES) | cksum | cut -d' ' -f1)
# cpio packs the Linux test guest's initramfs.
VM_PACKAGES := qemu-system-x86 cpio
VM_STAMP := .stamp-vm-$(shell echo $(VM_PACKAGES) | cksum | cut -d' ' -f1)
VENV_STAMP := $(VENV)/.stamp
NATIVE := native/build
LINUX_GUEST := $(NATIVE)/linux-guest
LINUX_GUEST_STAMP := $(LINUX_GUEST)/.stamp
PYTEST_ARGS ?=

.PHONY: all deps native linux-guest test test-python test-scripts demo bench fuzz dist clean

all: deps native

deps: $(SYS_STAMP) $(VENV_STAMP)

# System packages: install only what is missing (apt-get update once, only if needed).
define install_missing
	@missing=""; for p in $(1); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  if [ "$$(id -u)" != 0 ]; then SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi
endef

$(SYS_STAMP):
	$(call install_missing,$(SYS_PACKAGES))
	@test -e /dev/fuse || modprobe fuse 2>/dev/null || { echo "/dev/fuse is missing"; exit 1; }
	@touch $@

# QEMU, for `luofs vm` (its tests, the demo's VM scene, the VM benchmark) only.
$(VM_STAMP): $(SYS_STAMP)
	$(call install_missing,$(VM_PACKAGES))
	@touch $@

# The Linux guest of luofs vm's tests: Debian's cloud kernel and a busybox initramfs with
# native/linux-guest/init, fetched once as .debs (~28 MB) and never installed. Where that
# fails (offline, not x86-64) make goes on: the test that boots it skips, saying why.
linux-guest: $(LINUX_GUEST_STAMP)

$(LINUX_GUEST_STAMP): native/linux-guest/build.sh native/linux-guest/init | $(VM_STAMP)
	@native/linux-guest/build.sh $(LINUX_GUEST) && touch $@ || true

$(VENV_STAMP): pyproject.toml | $(SYS_STAMP)
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]' --config-settings editable_mode=compat
	@touch $@

native: $(SYS_STAMP)
	@if [ -f native/Makefile ]; then $(MAKE) -s -C native; fi

test: deps native $(VM_STAMP) $(LINUX_GUEST_STAMP)
	$(PY) -m pytest -q -n 2 $(PYTEST_ARGS)
	@if [ -x scripts/run-tests.sh ]; then PATH="$(CURDIR)/$(VENV)/bin:$$PATH" scripts/run-tests.sh; fi

demo: deps native $(VM_STAMP) $(LINUX_GUEST_STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" scripts/demo.sh

BENCH_STAMP := $(VENV)/.stamp-bench
$(BENCH_STAMP): $(VENV_STAMP)
	$(PY) -m pip install -q -e '.[test,bench]' --config-settings editable_mode=compat
	@touch $@

bench: deps native $(VM_STAMP) $(LINUX_GUEST_STAMP) $(BENCH_STAMP)
	$(PY) -m bench

# The long runs (opt-in, hours): ≥ 1,000,000 fuzzed frames, ≥ 10,000 whole-system
# sequences against the reference model, 100 live updates carrying 1 GiB.
fuzz: deps native
	$(PY) -m pytest -q -s -p no:xdist -m slow tests

# The sdist and the wheel a user installs (README, "Install as a package"); the wheel is
# built from the sdist, with the native pieces inside.
dist: deps
	$(PY) -m build --outdir dist

clean:
	rm -rf $(VENV) $(NATIVE) .stamp-sys* .stamp-vm* .pytest_cache .hypothesis build dist *.egg-info
	@if [ -f native/Makefile ]; then $(MAKE) -s -C native clean; fi
