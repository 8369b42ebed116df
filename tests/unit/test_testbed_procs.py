"""The testbed's one way to start a daemon: a daemon that dies or never listens is named,
with its own words, instead of a test hanging or failing later on a refused connection."""

import socket

import pytest

from tests.testbed.procs import free_port, start_daemon, stop_process


def test_a_daemon_that_exits_is_named_with_its_log(tmp_path):
    log = str(tmp_path / "d.log")
    with pytest.raises(RuntimeError) as e:
        start_daemon(["sh", "-c", "echo 'bad config line 3' >&2; exit 3"], "fakeduck",
                     ("127.0.0.1", free_port()), log, output=log)
    assert "fakeduck exited with status 3" in str(e.value)
    assert "bad config line 3" in str(e.value)


def test_a_daemon_that_never_listens_is_stopped_and_named(tmp_path):
    log = str(tmp_path / "d.log")
    port = free_port()
    with pytest.raises(RuntimeError) as e:
        start_daemon(["sleep", "60"], "sleeper", ("127.0.0.1", port), log, timeout=0.5)
    assert f"sleeper did not start listening on 127.0.0.1:{port}" in str(e.value)
    assert "(no log" in str(e.value)


def test_a_listening_daemon_is_returned_running(tmp_path):
    log = str(tmp_path / "d.log")
    port = free_port()
    server = f"import socket,time; s=socket.socket(); s.bind(('127.0.0.1',{port})); s.listen(); time.sleep(60)"
    proc = start_daemon(["python3", "-c", server], "pyserver", ("127.0.0.1", port), log, output=log)
    try:
        assert proc.poll() is None
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    finally:
        stop_process(proc)
    assert proc.returncode is not None
