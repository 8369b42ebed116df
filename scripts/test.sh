#!/bin/sh
# `make test`: every tier, the vm tier included, within CI's time.
#
# The live ISO is built in the background while the tiers that do not need it (unit, tui)
# run: the build is mostly downloads, dpkg and one squashfs pass, and those tiers are short
# and not timing-sensitive. The integration and vm tiers follow once the ISO is there.
# Every pytest run prints its slowest tests (--durations), so the cost stays visible.
# COLDCLONE_NO_SKIP=1: here every tool is installed and the ISO is built, so a skipped test
# is a failure (tests/conftest.py): a broken set-up cannot hide tests.
set -u
cd "$(dirname "$0")/.."

PYTEST=.venv/bin/pytest
BUILD=${COLDCLONE_BUILD:-livecd/build}
mkdir -p "$BUILD"
ISO_LOG="$BUILD/iso-build.log"
export COLDCLONE_NO_SKIP=1

t0=$(date +%s)
echo "make test: building the live ISO in the background (log: $ISO_LOG)"
IDENTITY="${IDENTITY:-}" HOSTKEY="${HOSTKEY:-}" livecd/build.sh >"$ISO_LOG" 2>&1 &
iso_pid=$!

rc=0
$PYTEST -q tests/unit tests/tui --durations=15 || rc=1

if ! wait "$iso_pid"; then
    tail -n 40 "$ISO_LOG" >&2
    echo "make test: the live ISO build failed (the whole log: $ISO_LOG); the vm tier cannot run" >&2
    exit 1
fi
tail -n 4 "$ISO_LOG"
echo "make test: the ISO was ready $(( $(date +%s) - t0 )) s after the start"

# Two workers: a TCG guest or a receiver's pipeline leaves a core idle much of the time. A
# module's tests stay on one worker (tests/conftest.py). What measures against the clock runs
# alone afterwards (-m serial).
$PYTEST -q -n 2 --dist loadgroup -m "not slow and not serial" tests/integration tests/vm --durations=40 || rc=1
$PYTEST -q -m "serial and not slow" tests/integration tests/vm --durations=10 || rc=1
echo "make test: all tiers in $(( $(date +%s) - t0 )) s"
exit $rc
