# The two commands a newcomer types: `make demo` and `make test`.
# Both run scripts/setup.sh first (apt packages + .venv), so they work on a fresh machine.
PY := .venv/bin/python
PYTEST := .venv/bin/pytest

.PHONY: setup lint test unit integration demo bench iso vm convert-slow clean

setup:
	@sh scripts/setup.sh

# The layer rules (.importlinter; docs/architecture.md explains them).
lint: setup
	.venv/bin/lint-imports

# Everything, the vm tier included: the ISO is built (or refreshed, ~1 min warm) in the
# background while the unit and TUI tiers run, then integration and vm (scripts/test.sh).
test: setup lint
	IDENTITY="$(IDENTITY)" HOSTKEY="$(HOSTKEY)" sh scripts/test.sh

unit: setup
	$(PYTEST) -q tests/unit

integration: setup
	$(PYTEST) -q tests/integration

# With a built ISO (make iso) the demo boots it in QEMU and captures headless; without one,
# it runs the same capture from this host.
demo: setup
	@if [ -f livecd/build/coldclone.iso ] && [ -z "$(HOST_DEMO)" ]; then \
		$(PY) -m tests.testbed.vmdemo; else $(PY) -m tests.testbed.demo; fi

bench: setup
	$(PY) -m tests.testbed.bench $(BENCH_ARGS)

# The live ISO (root; about 4 min cold, under 1 min warm): livecd/build/coldclone.iso
iso: setup
	IDENTITY="$(IDENTITY)" HOSTKEY="$(HOSTKEY)" livecd/build.sh

# Boot tests of the ISO in QEMU (skip when the ISO has not been built)
vm: setup
	$(PYTEST) -q -s -m vm tests/vm

# A real Debian disk through virt-v2v and a virtio boot: tens of minutes under TCG, so not in
# `make test` (the `slow` marker is deselected by default).
convert-slow: setup
	$(PYTEST) -q -s -m slow tests/integration/test_convert_v2v.py

clean:
	rm -rf .venv build *.egg-info .pytest_cache
