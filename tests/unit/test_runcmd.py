"""The one command runner: clear failures, and secrets never in a log or an error."""

import logging

import pytest

from agent.errors import CommandError
from agent.runcmd import run


def test_failure_names_command_exit_code_and_stderr():
    with pytest.raises(CommandError) as e:
        run(["sh", "-c", "echo broken disk >&2; exit 3"])
    assert e.value.returncode == 3
    assert "sh -c" in str(e.value) and "exit 3" in str(e.value) and "broken disk" in str(e.value)


def test_missing_tool_names_its_package():
    with pytest.raises(CommandError, match="install the Debian package open-iscsi"):
        run(["/nonexistent/iscsiadm", "-m", "session"])


def test_secret_masked_in_log_and_error(caplog):
    secret = "chap-s3cret-value"
    caplog.set_level(logging.DEBUG, logger="coldclone.cmd")
    res = run(["sh", "-c", 'echo "$0" >&2', secret], secrets=(secret,))
    assert res.returncode == 0
    with pytest.raises(CommandError) as e:
        run(["sh", "-c", 'echo "bad password $0" >&2; exit 24', secret], secrets=(secret,))
    assert secret not in caplog.text and "****" in caplog.text
    assert secret not in str(e.value) and secret not in " ".join(e.value.argv)
    assert secret not in res.stderr


def test_output_file_gets_stdout_and_stderr_as_they_come(tmp_path):
    log = tmp_path / "tool.log"
    res = run(["sh", "-c", "echo out; echo err >&2; exit 3"], check=False, output_file=str(log))
    assert res.returncode == 3
    assert log.read_text() == "out\nerr\n" == res.stderr


def test_leaves_server_does_not_wait_for_the_forked_server():
    import time
    t = time.monotonic()
    # The background sleep keeps stderr open; without leaves_server run() would wait 5 s for it.
    res = run(["sh", "-c", "(sleep 5 >/dev/null &) ; echo started"], leaves_server=True)
    assert res.stdout == "started\n" and time.monotonic() - t < 4
