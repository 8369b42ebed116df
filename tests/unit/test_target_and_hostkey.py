"""Target URLs and host-key trust decisions (no network: real paramiko keys)."""

import paramiko
import pytest

from agent.errors import HostKeyError, UsageError
from agent.source.transport.ssh import fingerprint, normalize_pin, verify_host_key
from agent.source.transport.url import parse_target


def test_ssh_url_parsed():
    u = parse_target("ssh://coldclone@conv.example.net:2222/srv/coldclone/batch-1")
    assert (u.scheme, u.user, u.host, u.port, u.path) == ("ssh", "coldclone", "conv.example.net", 2222,
                                                          "/srv/coldclone/batch-1")
    assert str(u) == "ssh://coldclone@conv.example.net:2222/srv/coldclone/batch-1"
    assert parse_target("ssh://u@10.0.2.2/").port == 22
    assert parse_target("file:///mnt/usb/images").path == "/mnt/usb/images"


def test_nfs_url_parsed():
    u = parse_target("nfs://10.0.2.2/srv/exports/coldclone/batch-1")
    assert (u.scheme, u.host, u.port, u.path, u.nfs_version) == ("nfs", "10.0.2.2", 2049,
                                                                 "/srv/exports/coldclone/batch-1", None)
    assert str(u) == "nfs://10.0.2.2/srv/exports/coldclone/batch-1"
    u = parse_target("nfs://filer.example.net:20490/vol/images/?vers=4.2")
    assert (u.host, u.port, u.path, u.nfs_version) == ("filer.example.net", 20490, "/vol/images", "4.2")
    assert str(u) == "nfs://filer.example.net:20490/vol/images?vers=4.2"


@pytest.mark.parametrize("text,match", [
    ("conv:/srv", "expected ssh://"),
    ("ssh://conv/srv", "no user"),
    ("ssh://u@:22/srv", "no host"),
    ("ssh://u@h:99999/srv", "port"),
    ("ssh://u:hunter2@h/srv", "never put a password"),
    ("nfs://h/", "name the export"),
    ("nfs://u@h/export", "has no user"),
    ("nfs://h/export/../etc", "'..' is not allowed"),
    ("nfs://h/export?vers=9", "the only option is vers="),
    ("smb://h/share", "expected ssh://"),
    ("file://relative/path", "three slashes"),
])
def test_bad_urls_explain_themselves(text, match):
    with pytest.raises(UsageError, match=match) as e:
        parse_target(text)
    assert "hunter2" not in str(e.value)


def test_password_never_echoed():
    with pytest.raises(UsageError) as e:
        parse_target("ssh://u:hunter2@h/srv")
    assert "hunter2" not in str(e.value) and "u:****@h" in str(e.value)


def _key(tmp_path, name):
    import subprocess

    p = tmp_path / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(p)], check=True)
    return paramiko.PKey.from_path(str(p)), open(f"{p}.pub").read().split()


def test_fingerprint_matches_ssh_keygen(tmp_path):
    import subprocess

    key, _ = _key(tmp_path, "k")
    out = subprocess.run(["ssh-keygen", "-l", "-E", "sha256", "-f", str(tmp_path / "k.pub")],
                         capture_output=True, text=True, check=True).stdout.split()[1]
    assert fingerprint(key) == out
    assert normalize_pin(out[len("SHA256:"):]) == out


def test_known_hosts_decisions(tmp_path):
    server, pub = _key(tmp_path, "server")
    other, opub = _key(tmp_path, "other")
    u = parse_target("ssh://u@10.1.2.3:2200/x")
    kh = tmp_path / "known_hosts"
    kh.write_text(f"[10.1.2.3]:2200 {pub[0]} {pub[1]}\n")
    assert "known_hosts" in verify_host_key(u, server, None, str(kh))
    with pytest.raises(HostKeyError, match="HOST KEY CHANGED") as e:
        verify_host_key(u, other, None, str(kh))
    assert fingerprint(other) in str(e.value) and fingerprint(server) in str(e.value)
    with pytest.raises(HostKeyError, match="not in"):
        verify_host_key(parse_target("ssh://u@10.9.9.9/x"), server, None, str(kh))
    with pytest.raises(HostKeyError, match="does not exist"):
        verify_host_key(u, server, None, str(tmp_path / "missing"))
    with pytest.raises(HostKeyError, match="no pinned fingerprint and no known_hosts"):
        verify_host_key(u, server, None, None)


def test_pin_decisions(tmp_path):
    server, _ = _key(tmp_path, "server")
    u = parse_target("ssh://u@h/x")
    fp = fingerprint(server)
    assert "pinned" in verify_host_key(u, server, fp, None)
    assert "pinned" in verify_host_key(u, server, fp[len("SHA256:"):] + "=", None)
    with pytest.raises(HostKeyError, match="MISMATCH") as e:
        verify_host_key(u, server, "SHA256:" + "B" * 43, None)
    assert f"--hostkey {fp}" in str(e.value)
