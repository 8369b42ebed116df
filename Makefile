# The two commands a newcomer types: `make demo` and `make test`.
# Both run scripts/setup.sh first (apt packages + .venv), so they work on a fresh machine.
PY := .venv/bin/python
PYTEST := .venv/bin/pytest

.PHONY: setup test unit integration demo bench iso vm clean

setup:
	@sh scripts/setup.sh

test: setup
	$(PYTEST) -q tests

unit: setup
	$(PYTEST) -q tests/unit

integration: setup
	$(PYTEST) -q tests/integration

demo: setup
	$(PY) -m agent.testbed.demo

bench: setup
	$(PY) -m agent.testbed.bench $(BENCH_ARGS)

# The live ISO (root; about 4 min cold, under 1 min warm): livecd/build/coldclone.iso
iso:
	IDENTITY="$(IDENTITY)" HOSTKEY="$(HOSTKEY)" livecd/build.sh

# Boot tests of the ISO in QEMU (skip when the ISO has not been built)
vm: setup
	$(PYTEST) -q -s -m vm tests/vm

clean:
	rm -rf .venv build *.egg-info .pytest_cache
