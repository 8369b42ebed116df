"""`coldclone headless` on this host: the kernel command line drives a real capture.

The same runner the live ISO starts (tests/vm boot it for real); here the command line
comes from --cmdline, the source is a loop device and the server a real sshd on 127.0.0.1.
"""

import json
import os
import re
import socket

import pytest

from agent.runcmd import run
from tests.testbed import synthdisk
from tests.conftest import coldclone, sha256_of

pytestmark = pytest.mark.root
MiB = 1 << 20


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    img = str(tmp_path_factory.mktemp("hl") / "server.img")
    with synthdisk.on_loop(img, size=256 * MiB, table="gpt", files_mb=24, remnant_mb=4) as (loop, _):
        yield loop


def server_words(sshd, rx_dir, **extra):
    words = {
        "server": f"ssh://{sshd.user}@127.0.0.1:{sshd.port}{rx_dir}",
        "identity": sshd.client_key,
        "hostkey": sshd.fingerprint,
        "calibrate": "0",
        "progress": "1",
        "iscsi": "off",
    }
    words.update(extra)
    return " ".join(f"coldclone.{k}" if v is None else f"coldclone.{k}={v}" for k, v in words.items())


def headless(cmdline, timeout=300, env=None):
    return coldclone("headless", "--include-loop", "--baked-root", "/nonexistent",
                     "--cmdline", f"boot=live quiet {cmdline}", timeout=timeout, env=env)


def json_block(out: str, tag: str):
    m = re.search(rf"^COLDCLONE-{tag}-JSON-BEGIN\n(.*?)^COLDCLONE-{tag}-JSON-END$", out, re.M | re.S)
    assert m, f"no {tag} block in:\n{out[-2000:]}"
    return json.loads(m.group(1))


def test_headless_capture_equals_source(sshd, rx_dir, source, tmp_path):
    before = sha256_of(source.dev)
    name = os.path.basename(source.dev)
    marker = tmp_path / "pre-ran"
    hook = tmp_path / "pre.sh"
    hook.write_text(f'echo "phase=$COLDCLONE_PHASE" > {marker}\necho hello from the hook\n')
    r = headless(server_words(sshd, rx_dir, disks=name, capture_id="hl-1", pre=str(hook)))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "COLDCLONE-HEADLESS-OK capture_id=hl-1" in r.stdout
    assert marker.read_text().strip() == "phase=pre"
    assert "coldclone:   pre: hello from the hook" in r.stdout
    inv = json_block(r.stdout, "INVENTORY")
    chosen = [d["name"] for d in inv["disks"] if d["capture_default"]]
    assert chosen == [name]
    qcow2 = os.path.join(rx_dir, "hl-1", f"{name}.qcow2")
    run(["qemu-img", "compare", "-f", "raw", "-F", "qcow2", source.dev, qcow2])
    assert sha256_of(source.dev) == before
    manifest = json.load(open(os.path.join(rx_dir, "hl-1", "manifest.json")))
    captured = [d for d in manifest["source"]["inventory"]["disks"] if d["capture_default"]]
    assert [d["name"] for d in captured] == [name]
    assert "on_done=poweroff" in r.stdout  # said, but not done: no --live on this host


def test_estimate_only_captures_nothing(sshd, rx_dir, source):
    name = os.path.basename(source.dev)
    # a real server on the line: a runner that ignored estimate_only would capture into rx_dir
    r = headless(server_words(sshd, rx_dir, estimate_only=None, disks=name))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "nothing captured" in r.stdout and "COLDCLONE-HEADLESS-OK capture_id=-" in r.stdout
    assert json_block(r.stdout, "INVENTORY")["disks"]
    assert os.listdir(rx_dir) == []


def test_typo_on_the_command_line_fails_plainly(sshd, rx_dir, source, tmp_path):
    fail_log = tmp_path / "fail.log"
    hook = tmp_path / "fail.sh"
    hook.write_text(f'echo "$COLDCLONE_EXIT $COLDCLONE_MESSAGE" > {fail_log}\n')
    words = server_words(sshd, rx_dir, disks=os.path.basename(source.dev)).replace("coldclone.server=", "coldclone.sever=")
    r = headless(words + f" coldclone.fail={hook}")
    assert r.returncode == 2
    assert "coldclone: error: " in r.stdout
    assert "unknown kernel command line key coldclone.sever; did you mean coldclone.server?" in r.stdout
    assert re.search(r"^COLDCLONE-HEADLESS-FAILED exit=2: ", r.stdout, re.M)
    # the key was wrong, so the config (and its fail hook) never existed: nothing ran
    assert not fail_log.exists()
    assert os.listdir(rx_dir) == []


def test_unreachable_server_fails_plainly_and_runs_the_fail_hook(sshd, rx_dir, source, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]   # closed again: nothing listens there
    fail_log = tmp_path / "fail.log"
    hook = tmp_path / "fail.sh"
    hook.write_text(f'echo "$COLDCLONE_EXIT" > {fail_log}\n')
    words = server_words(sshd, rx_dir, disks=os.path.basename(source.dev), fail=str(hook), timeout="5")
    words = words.replace(f"127.0.0.1:{sshd.port}", f"127.0.0.1:{port}")
    r = headless(words)
    assert r.returncode == 3, r.stdout + r.stderr
    assert re.search(r"^COLDCLONE-HEADLESS-FAILED exit=3: .*127\.0\.0\.1", r.stdout, re.M), r.stdout
    assert fail_log.read_text().strip() == "3"


def test_unknown_disk_and_wrong_host_key_are_refused(sshd, rx_dir, source):
    r = headless(server_words(sshd, rx_dir, disks="sdzz"))
    assert r.returncode == 2 and "coldclone.disks=: selected disk sdzz is not a known disk" in r.stdout
    wrong = "SHA256:" + "A" * 43
    r = headless(server_words(sshd, rx_dir, disks=os.path.basename(source.dev), hostkey=wrong))
    assert r.returncode == 3, r.stdout
    assert "HOST KEY MISMATCH" in r.stdout and f"coldclone.hostkey={sshd.fingerprint}" in r.stdout
    assert os.listdir(rx_dir) == []


def test_failing_pre_hook_stops_before_anything_is_sent(sshd, rx_dir, source, tmp_path):
    hook = tmp_path / "pre.sh"
    hook.write_text("echo 'no VLAN 12 on this NIC' >&2\nexit 7\n")
    r = headless(server_words(sshd, rx_dir, disks=os.path.basename(source.dev), pre=str(hook)))
    assert r.returncode == 2
    assert "the pre hook" in r.stdout and "exit 7" in r.stdout and "no VLAN 12 on this NIC" in r.stdout
    assert os.listdir(rx_dir) == []


def _self_signed(tmp_path):
    """A CA-less self-signed certificate for 127.0.0.1 (trusted via REQUESTS_CA_BUNDLE)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    crt, pem = tmp_path / "web.crt", tmp_path / "web.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    return str(crt), str(pem)


def test_identity_fetched_over_https(sshd, rx_dir, source, tmp_path):
    """coldclone.identity=https://...: the key comes from a web server (PXE fleets), verified TLS."""
    import http.server
    import shutil
    import ssl
    import threading

    webroot = tmp_path / "www"
    webroot.mkdir()
    shutil.copy(sshd.client_key, webroot / "id")
    crt, pem = _self_signed(tmp_path)
    handler = lambda *a, **kw: http.server.SimpleHTTPRequestHandler(*a, directory=str(webroot), **kw)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(crt, pem)
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    port = httpd.server_address[1]
    name = os.path.basename(source.dev)
    token = "Tok3n-SECRET-42"     # a pre-signed URL's credential: never shown
    trusted = {"REQUESTS_CA_BUNDLE": crt}
    try:
        words = server_words(sshd, rx_dir, disks=name, capture_id="hl-https",
                             identity=f"https://127.0.0.1:{port}/id?token={token}")
        r = headless(words, env=trusted)
        assert r.returncode == 0, r.stdout + r.stderr
        assert f"identity fetched from https://127.0.0.1:{port}/id?token=****" in r.stdout
        assert f"identity=https://127.0.0.1:{port}/id?token=****" in r.stdout   # the configuration line
        assert token not in r.stdout + r.stderr
        run(["qemu-img", "compare", "-f", "raw", "-F", "qcow2", source.dev,
             os.path.join(rx_dir, "hl-https", f"{name}.qcow2")])
        # the key is never printed
        key_body = open(sshd.client_key).read().splitlines()[1]
        assert key_body not in r.stdout + r.stderr
        # an untrusted certificate is refused with a plain message, nothing sent
        r = coldclone("headless", "--include-loop", "--baked-root", "/nonexistent", "--cmdline",
                      server_words(sshd, rx_dir, disks=name, capture_id="hl-https2",
                                   identity=f"https://127.0.0.1:{port}/id"))
        assert r.returncode == 3, r.stdout + r.stderr
        assert "could not fetch the identity (private key)" in r.stdout and "CERTIFICATE_VERIFY_FAILED" in r.stdout
        assert not os.path.exists(os.path.join(rx_dir, "hl-https2"))
        # a URL the server does not have: the error names it, without its token
        r = headless(server_words(sshd, rx_dir, disks=name, capture_id="hl-https3",
                                  identity=f"https://127.0.0.1:{port}/gone?token={token}"), env=trusted)
        assert r.returncode == 3, r.stdout + r.stderr
        assert (f"could not fetch the identity (private key) from https://127.0.0.1:{port}/gone?token=****: "
                "404 Client Error") in r.stdout, r.stdout
        assert token not in r.stdout + r.stderr
        assert not os.path.exists(os.path.join(rx_dir, "hl-https3"))
    finally:
        httpd.shutdown()
