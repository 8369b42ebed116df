# The two commands a newcomer types: `make demo` and `make test`.
# Both run scripts/setup.sh first (apt packages + .venv), so they work on a fresh machine.
PY := .venv/bin/python
PYTEST := .venv/bin/pytest

.PHONY: setup test unit integration demo bench clean

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

clean:
	rm -rf .venv build *.egg-info .pytest_cache
