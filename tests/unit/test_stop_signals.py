"""Ctrl-C, SIGTERM, SIGHUP: one clean way to stop a capture (real signals to this process)."""

import os
import signal
import threading

import pytest

from agent.source.capture.session import CaptureCancelled
from agent.source.capture.stop import StopOnSignal


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_first_signal_cancels_second_stops_at_once(sig):
    before = signal.getsignal(sig)
    cancel = threading.Event()
    seen = []
    with StopOnSignal(cancel, seen.append) as stop:
        os.kill(os.getpid(), sig)
        assert cancel.is_set() and stop.signame == signal.Signals(sig).name
        assert seen == [stop.signame]
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), sig)
    assert signal.getsignal(sig) == before


def test_the_operator_is_told_what_happened():
    stop = StopOnSignal(threading.Event())
    stop.signame = "SIGTERM"
    err = stop.error(CaptureCancelled("x", aborted_on_server=True))
    assert str(err).startswith("capture cancelled by SIGTERM: ABORT sent to the conversion server")
    assert err.exit_code == 6
    early = str(stop.error(CaptureCancelled("x", aborted_on_server=False)))
    assert "ABORT" not in early and early.startswith("capture cancelled by SIGTERM: the source disks")
