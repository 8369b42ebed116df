"""The kernel command line -> CaptureConfig: every key checked, every mistake named."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.source.config import OPTIONS, PREFIX, CaptureConfig, describe, from_cmdline, kernel_words
from agent.errors import UsageError
from tests.conftest import coldclone

BASE = "BOOT_IMAGE=/live/vmlinuz boot=live components quiet console=ttyS0,115200"
SERVER = "coldclone.server=ssh://cc@10.0.0.5:2222/srv/coldclone coldclone.identity=/run/live/medium/id"


def parse(words: str, **kw) -> CaptureConfig:
    return from_cmdline(f"{BASE} {words}", baked_root=kw.get("baked_root", "/nonexistent"))


def test_full_command_line():
    cfg = parse(f"{SERVER} coldclone.hostkey=SHA256:ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopq "
                "coldclone.disks=sda,md127,cciss/c0d0 coldclone.exclude=sdc coldclone.mode=full "
                "coldclone.iscsi=off coldclone.iscsi_ip=192.168.10.21/24 coldclone.on_done=shell "
                "coldclone.pre=https://pxe/pre.sh coldclone.estimate_only coldclone.calibrate=0 "
                "coldclone.format=raw coldclone.compress=zstd:3 coldclone.capture_id=web-01").check()
    assert cfg.server == ["ssh://cc@10.0.0.5:2222/srv/coldclone"]
    assert cfg.identity == "/run/live/medium/id"
    assert cfg.hostkey == ["SHA256:ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopq"]
    assert cfg.disks == ["sda", "md127", "cciss/c0d0"] and cfg.exclude == ["sdc"]
    assert (cfg.mode, cfg.iscsi, cfg.iscsi_ip, cfg.on_done) == ("full", "off", "192.168.10.21/24", "shell")
    assert cfg.pre == "https://pxe/pre.sh" and cfg.estimate_only and cfg.calibrate == 0
    assert (cfg.format, cfg.compress, cfg.capture_id) == ("raw", "zstd:3", "web-01")


def test_defaults_and_foreign_words_ignored():
    cfg = parse(SERVER + " ip=dhcp root=/dev/sda1 coldclone_not_ours=1").check()
    assert cfg.disks is None and cfg.mode == "nonzero" and cfg.on_done == "poweroff"
    assert cfg.iscsi == "auto" and cfg.format == "qcow2" and not cfg.estimate_only


def test_typo_in_key_is_named_with_a_suggestion():
    with pytest.raises(UsageError) as e:
        parse("coldclone.sever=ssh://cc@h/p coldclone.identity=/k")
    msg = str(e.value)
    assert "coldclone.sever" in msg and "did you mean coldclone.server?" in msg


def test_bad_values_are_named_with_what_is_accepted():
    cases = {
        "coldclone.on_done=poweroof": "did you mean poweroff?",
        "coldclone.mode=sparse": "use used or nonzero or full",
        "coldclone.iscsi=yes": "use auto or off",
        "coldclone.iscsi_ip=somewhere": "ADDRESS/PREFIX",
        "coldclone.iscsi_ip=300.1.1.1/24": "ADDRESS/PREFIX",
        "coldclone.iscsi_ip=10.0.0.5/40": "ADDRESS/PREFIX",
        "coldclone.iscsi_ip=10.0.0.5/32": "ADDRESS/PREFIX",
        "coldclone.ip=eth0:10.0.0.5": "has no prefix length",
        "coldclone.ip=10.0.0.5/24,gw=10.9.9.9": "is not inside 10.0.0.0/24",
        "coldclone.ip=10.0.0.5/24,mtu=9000": "unknown option",
        "coldclone.calibrate=lots": "number of seconds",
        "coldclone.calibrate=1000": "between 0 and 120",
        "coldclone.server=ftp://h/p": "expected ssh://",
        "coldclone.server=ssh://h/p": "no user",
        "coldclone.identity=http://pxe/key": "only fetched over https",
        "coldclone.identity=id_rsa": "absolute path",
        "coldclone.pre=hook.sh": "absolute path on the live system",
        "coldclone.disks=": "needs a value",
        "coldclone.disks=sda,,sdb": "comma-separated",
        "coldclone.capture_id=../etc": "letters, digits",
        "coldclone.hostkey=abc": "SHA256",
        "coldclone.estimate_only=maybe": "=1 / =0",
        "coldclone.format=vmdk": "use qcow2 or raw",
    }
    for words, expected in cases.items():
        key = words.split("=")[0]
        rest = "" if key in ("coldclone.server", "coldclone.identity") else SERVER
        with pytest.raises(UsageError) as e:
            parse(f"{rest} {words}")
        assert expected in str(e.value), (words, str(e.value))
        assert words.split("=")[0] in str(e.value), (words, str(e.value))


def test_every_problem_is_reported_at_once():
    with pytest.raises(UsageError) as e:
        parse("coldclone.sever=x coldclone.mode=fast coldclone.on_done=halt")
    msg = str(e.value)
    assert "3 problems" in msg
    assert "coldclone.sever" in msg and "coldclone.mode" in msg and "coldclone.on_done" in msg


def test_conflicting_duplicate_is_refused_but_repeat_is_fine():
    assert parse(f"{SERVER} coldclone.mode=full coldclone.mode=full").mode == "full"
    with pytest.raises(UsageError, match="given twice"):
        parse(f"{SERVER} coldclone.mode=full coldclone.mode=nonzero")


def test_cross_key_checks():
    with pytest.raises(UsageError, match="coldclone.server= is missing"):
        parse("coldclone.mode=full").check()
    with pytest.raises(UsageError, match="needs a key"):
        parse("coldclone.server=ssh://cc@h/p").check()
    # estimate only needs no server; a file target needs no key
    assert parse("coldclone.estimate_only").check().estimate_only
    assert parse("coldclone.server=file:///mnt/usb/images").check().server == ["file:///mnt/usb/images"]


def test_quoted_values_and_unbalanced_quote():
    cfg = parse('coldclone.server=file:///mnt/usb coldclone.pre="/run/live/medium/hooks/pre.sh"')
    assert cfg.pre == "/run/live/medium/hooks/pre.sh"
    with pytest.raises(UsageError, match="unbalanced quote"):
        parse('coldclone.pre="/x')


def test_the_kernel_splits_words_its_own_way():
    """lib/cmdline.c next_arg: double quotes group (and only the opening quote of the word or
    of its value is removed, with its closing one), an apostrophe or a backslash is a plain
    character, and `--` ends the kernel's parameters (kernel/params.c parse_args)."""
    line = ('BOOT_IMAGE=/live/vmlinuz coldclone.pre="/run/live/medium/my hooks/pre.sh" '
            "it's x\\y \"quoted=a b\" mid\"dle x\"=1 =a=b -- coldclone.mode=fast single")
    assert kernel_words(line) == [
        ("BOOT_IMAGE", "/live/vmlinuz"), ("coldclone.pre", "/run/live/medium/my hooks/pre.sh"),
        ("it's", None), ("x\\y", None), ("quoted", "a b"), ('mid"dle x"', "1"), ("=a", "b")]
    assert kernel_words('a "--" b') == [("a", None)]          # "--" quoted is still the end
    assert kernel_words(" \t\n") == [] and kernel_words('a="') == [("a", "")]
    # the kernel reads bytes: its isspace() takes a 0xa0 byte (here as /proc/cmdline is read,
    # surrogateescape) for a blank too
    assert kernel_words("a\udca0b") == [("a", None), ("b", None)]


def test_quotes_apostrophes_and_double_dash_on_the_command_line():
    """Issue 19: one apostrophe anywhere failed the whole configuration (shlex), and the words
    after `--` (init's) were read as keys."""
    cfg = parse("coldclone.server=file:///mnt/o'brien coldclone.capture_id=web-01 "
                'coldclone.pre="/run/live/medium/my hooks/pre.sh" '
                "rd.break=it's -- coldclone.mode=fast coldclone.sever=x single").check()
    assert cfg.server == ["file:///mnt/o'brien"] and cfg.capture_id == "web-01"
    assert cfg.pre == "/run/live/medium/my hooks/pre.sh"
    assert cfg.mode == "nonzero"        # coldclone.mode=fast was init's, not ours
    # a key only after `--` is no key: nothing configured, and no typo reported either
    assert parse("-- coldclone.server=file:///x").server == []


def test_a_bad_server_address_is_a_usage_error_naming_the_key():
    with pytest.raises(UsageError) as e:
        parse("coldclone.server=ssh://u@[::1/")
    assert "coldclone.server" in str(e.value) and "closed brackets" in str(e.value)
    r = coldclone("headless", "--cmdline", "coldclone.server=ssh://u@[::1/", timeout=60)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "COLDCLONE-HEADLESS-FAILED exit=2: coldclone.server: target 'ssh://u@[::1/'" in r.stdout
    assert "Traceback" not in r.stdout + r.stderr and "internal error" not in r.stdout + r.stderr


_VALUE = st.lists(st.one_of(
    st.characters(blacklist_categories=("Cs",), blacklist_characters=' \t\n\r\x0b\x0c"\x00\xa0'),
    st.sampled_from(["[", "]", "::1", "@", ":", "/", "%", "?", "=", ",", "'", "\\", "ssh://", "nfs://",
                     "file://", "https://", "u@", "0", "99999", "-", ".", "/24", "gw=", "zstd:"])),
    max_size=12).map("".join)


@settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(st.sampled_from([o.key for o in OPTIONS if o.kernel]), _VALUE)
def test_every_bad_value_of_every_key_is_a_usage_error_naming_it(key, value):
    """No value of any key ends in a traceback: a configuration, or a UsageError (exit 2)
    that names the key."""
    try:
        from_cmdline(f"{PREFIX}{key}={value}", baked_root="/nonexistent")
    except UsageError as e:
        assert f"{PREFIX}{key}" in str(e), (key, value, str(e))


def test_live_system_keys_are_not_typos():
    cfg = parse("coldclone.smoke=abc coldclone.smoke_done=shell coldclone.tui "
                "coldclone.server=file:///x").check()
    assert cfg.server == ["file:///x"]


def test_network_keys_that_are_right_pass_through():
    cfg = parse(SERVER + " coldclone.ip=eth1:192.168.10.21/24,gw=192.168.10.1,dns=192.168.10.2 "
                "coldclone.iscsi_ip=10.20.0.7/16").check()
    assert cfg.ip == "eth1:192.168.10.21/24,gw=192.168.10.1,dns=192.168.10.2"
    assert cfg.iscsi_ip == "10.20.0.7/16"
    assert parse(SERVER + " coldclone.ip=dhcp").ip == "dhcp"


def test_baked_identity_and_hostkey(tmp_path):
    (tmp_path / "etc/coldclone").mkdir(parents=True)
    (tmp_path / "etc/coldclone/identity").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    (tmp_path / "etc/coldclone/hostkey").write_text("SHA256:bakedbakedbakedbakedbakedbakedbakedbakedbak\n")
    cfg = parse("coldclone.server=ssh://cc@h/p", baked_root=str(tmp_path)).check()
    assert cfg.identity == str(tmp_path / "etc/coldclone/identity")
    assert cfg.hostkey == ["SHA256:bakedbakedbakedbakedbakedbakedbakedbakedbak"]
    # what the operator types at boot wins over what was baked in
    cfg = parse("coldclone.server=ssh://cc@h/p coldclone.identity=/k", baked_root=str(tmp_path))
    assert cfg.identity == "/k"


def test_describe_shows_no_secrets_and_names_disks():
    lines = describe(parse(SERVER + " coldclone.disks=sda"))
    assert "disks=sda" in lines and "server=ssh://cc@10.0.0.5:2222/srv/coldclone" in lines
    assert "disks=all" in describe(parse(SERVER))
    # URLs lose their tokens wherever they are (a server password is refused outright)
    lines = describe(parse(SERVER.split()[0] + " "
                           "coldclone.identity=https://pxe/id?token=T0ken-1 "
                           "coldclone.pre=https://pxe/pre.sh?X-Amz-Signature=S1gnature"))
    text = "\n".join(lines)
    assert "T0ken-1" not in text and "S1gnature" not in text, text
    assert "identity=https://pxe/id?token=****" in lines, lines
    assert "pre=https://pxe/pre.sh?X-Amz-Signature=****" in lines, lines


def test_docs_table_is_the_declaration():
    """docs/cli.md's kernel key table is generated from config.OPTIONS (markdown_table):
    a key added, renamed or re-described in one place and not the other fails here."""
    import os

    from agent.source.config import markdown_table

    doc = open(os.path.join(os.path.dirname(__file__), "..", "..", "docs", "cli.md")).read()
    assert markdown_table() in doc, ("docs/cli.md's key table differs from agent/source/config.py's OPTIONS; "
                                     "paste the output of `python -m agent.source.config --markdown`")


def test_every_config_field_is_declared_once():
    from dataclasses import fields

    from agent.source.config import OPTIONS, CaptureConfig

    assert [o.key for o in OPTIONS] == [f.name for f in fields(CaptureConfig)]
    for o in OPTIONS:
        if o.flag:
            assert o.flag.startswith("--") and o.metavar or o.parse is None, o


def test_cli_flags_use_the_declared_parsers():
    """The CLI flag and the kernel key share one parser: the same refusal, named by the flag."""
    import argparse

    from agent.source.config import add_flags, config_from_args

    ap = argparse.ArgumentParser(exit_on_error=False)
    add_flags(ap, ("mode", "compress", "timeout", "chunk_size"))
    cfg = config_from_args(ap.parse_args(["--mode", "full", "--chunk-size", "8M"]))
    assert cfg.mode == "full" and cfg.chunk_size == 8 << 20 and cfg.compress == "zstd:auto"
    with pytest.raises(argparse.ArgumentError, match="--mode='sparse' is not valid: use used or nonzero or full"):
        ap.parse_args(["--mode", "sparse"])
    with pytest.raises(argparse.ArgumentError, match="--timeout='0.1': must be between 1 and 600"):
        ap.parse_args(["--timeout", "0.1"])


def test_allow_mounted_is_an_explicit_flag():
    assert not parse(SERVER).check().allow_mounted
    assert parse(SERVER + " coldclone.allow_mounted=1").check().allow_mounted
    assert parse(SERVER + " coldclone.allow_mounted").check().allow_mounted
    assert not parse(SERVER + " coldclone.allow_mounted=0").check().allow_mounted
    assert "allow_mounted=True" in describe(parse(SERVER + " coldclone.allow_mounted=1"))
    with pytest.raises(UsageError) as e:
        parse(SERVER + " coldclone.allow_mounted=maybe")
    assert "coldclone.allow_mounted='maybe'" in str(e.value)
    with pytest.raises(UsageError) as e:
        parse(SERVER + " coldclone.allow_mount=1")
    assert "did you mean coldclone.allow_mounted?" in str(e.value)


PIN_A = "SHA256:" + "A" * 43
PIN_B = "SHA256:" + "b" * 43


def test_a_wave_several_servers_their_pins_the_label_and_the_cap():
    cfg = parse("coldclone.server=ssh://cc@10.0.0.5/srv,ssh://cc@10.0.0.6:2222/srv "
                f"coldclone.hostkey={PIN_A},{PIN_B} coldclone.identity=/k coldclone.wave=wave-3 "
                "coldclone.bwlimit=200mbit coldclone.failover=30").check()
    assert cfg.server == ["ssh://cc@10.0.0.5/srv", "ssh://cc@10.0.0.6:2222/srv"]
    assert cfg.hostkey == [PIN_A, PIN_B]
    assert (cfg.wave, cfg.bwlimit, cfg.failover) == ("wave-3", 25_000_000, 30.0)
    assert "bwlimit=200.0 Mbit/s" in describe(cfg) and "wave=wave-3" in describe(cfg)


@pytest.mark.parametrize("words,says", [
    ("coldclone.server=ssh://cc@a/p,file:///mnt/usb", "several servers must all be ssh://"),
    ("coldclone.server=ssh://cc@a/p,ssh://cc@a/p", "a server is named twice"),
    ("coldclone.server=ssh://cc@a/p,,ssh://cc@b/p", "an empty item"),
    ("coldclone.server=ssh://cc@a/p,ftp://b/p", "expected ssh://"),
    ("coldclone.hostkey=SHA256:short,SHA256:x", "is not a SHA256 fingerprint"),
    ("coldclone.wave=../etc", "a wave is named with letters"),
    ("coldclone.bwlimit=100", "give the unit"),
    ("coldclone.failover=-1", "between 0 and 86400"),
])
def test_wave_keys_refuse_bad_values(words, says):
    with pytest.raises(UsageError) as e:
        parse(words + " coldclone.identity=/k").check()
    assert says in str(e.value)


def test_cli_takes_several_to_flags_in_order():
    import argparse

    from agent.source.config import add_flags, config_from_args

    ap = argparse.ArgumentParser()
    add_flags(ap, ("server", "hostkey", "bwlimit", "wave"))
    args = ap.parse_args(["--to", "ssh://cc@a/p", "--to", "ssh://cc@b/p,ssh://cc@c/p", "--hostkey", PIN_A,
                          "--hostkey", PIN_B, "--bwlimit", "50M", "--wave", "w1"])
    cfg = config_from_args(args)
    assert cfg.server == ["ssh://cc@a/p", "ssh://cc@b/p", "ssh://cc@c/p"]
    assert cfg.hostkey == [PIN_A, PIN_B] and cfg.bwlimit == 50_000_000 and cfg.wave == "w1"


def test_baked_pins_of_a_wave(tmp_path):
    (tmp_path / "etc/coldclone").mkdir(parents=True)
    (tmp_path / "etc/coldclone/hostkey").write_text(f"{PIN_A}\n{PIN_B}\n")
    assert parse("coldclone.server=file:///x", baked_root=str(tmp_path)).hostkey == [PIN_A, PIN_B]


def test_a_url_where_a_list_goes_is_refused_not_read_letter_by_letter():
    with pytest.raises(TypeError, match="CaptureConfig.server is a list"):
        CaptureConfig(server="ssh://cc@h/p")
    with pytest.raises(TypeError, match="CaptureConfig.hostkey is a list"):
        CaptureConfig(hostkey=PIN_A)
