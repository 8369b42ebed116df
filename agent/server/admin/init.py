"""`coldclone-server init`: a conversion server set up in one command, and set up again without harm.

What it does, each step said as it goes (created / unchanged / replaced):
  1. the service user (a system user with a home, a shell for sshd's forced command, no password);
  2. the receiver root, owned by that user;
  3. the agents' key pair, kept root-only in --keys (an existing one is kept; --rotate-key makes
     a new one; --identity takes another server's, so one ISO reaches every server of a wave);
  4. the user's ~/.ssh/authorized_keys line for that key: the forced command
     `coldclone-receive --root DIR` with the chosen options, and `restrict` (no shell, no
     forwarding, no pty): a lost ISO gives nobody a shell. Other lines of the file are kept;
     ours (comment `coldclone-agent`) are replaced, so a rotated key stops working at once;
  5. the pin of sshd's host key, and the kernel command line to boot sources with;
  6. with --iso: livecd/build.sh with IDENTITY= and HOSTKEY=, so the ISO carries both.

It prints, for people and for scripts alike:
    identity=PATH             the agents' private key
    hostkey=SHA256:...        the pin of this server's host key
    cmdline=...               the kernel command line (coldclone.server=, .hostkey=, and .identity=
                              unless the ISO has it baked in)
    iso=PATH                  with --iso
"""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import socket
import stat
import sys
from dataclasses import dataclass, field
from typing import Callable

from ...bwlimit import parse_rate
from ...errors import ColdcloneError, CommandError, UsageError
from ...runcmd import run
from ...choices import ConvertEngine, ConvertNetwork, words

KEY_NAME = "agent_ed25519"
KEY_COMMENT = "coldclone-agent"
DEFAULT_HOST_KEY = "/etc/ssh/ssh_host_ed25519_key.pub"
KEYS_BASE = "/etc/coldclone-server"


@dataclass
class Setup:
    root: str
    user: str
    address: str | None = None           # HOST[:PORT] sources reach sshd at
    host_key: str = DEFAULT_HOST_KEY     # sshd's public host key (pinned)
    keys: str | None = None              # where the agents' key pair is kept
    identity: str | None = None          # an existing agents' key to take (another server's)
    rotate_key: bool = False
    convert: bool = False
    convert_engine: str = ConvertEngine.VIRT_V2V.value
    network: str = ConvertNetwork.DHCP.value   # coldclone-convert --network of every conversion
    max_conversions: int | None = None
    bwlimit: str | None = None
    iso: bool = False
    livecd: str | None = None
    say: Callable[[str], None] = field(default=lambda text: print(f"coldclone-server: {text}", flush=True))

    @property
    def key_dir(self) -> str:
        return self.keys or os.path.join(KEYS_BASE, self.user)

    @property
    def key_path(self) -> str:
        return os.path.join(self.key_dir, KEY_NAME)


# ------------------------------------------------------------------ helpers

def _write_if_changed(path: str, data: bytes, mode: int, uid: int = 0, gid: int = 0) -> bool:
    """Replace path with data in one rename, unless it holds exactly that already (idempotent)."""
    try:
        with open(path, "rb") as f:
            if f.read() == data:
                st = os.stat(path)
                if stat.S_IMODE(st.st_mode) != mode or (st.st_uid, st.st_gid) != (uid, gid):
                    os.chmod(path, mode)
                    os.chown(path, uid, gid)
                return False
    except FileNotFoundError:
        pass
    tmp = f"{path}.coldclone-{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chown(tmp, uid, gid)
        os.chmod(tmp, mode)
        os.rename(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return True


def _can(user: str, test: str, path: str) -> bool:
    """Whether `user` passes test(1) on path (-w, -x ...), asked as that user (runuser)."""
    return run(["runuser", "-u", user, "--", "test", test, path], check=False, quiet=True).returncode == 0


def receiver_path() -> str:
    """The coldclone-receive of this installation (beside the running interpreter), else on PATH."""
    here = os.path.join(os.path.dirname(sys.executable), "coldclone-receive")
    if os.access(here, os.X_OK):
        return here
    found = shutil.which("coldclone-receive")
    if not found:
        raise UsageError("coldclone-receive is not installed here: pip install 'coldclone[server]'")
    return found


def forced_command(s: Setup) -> str:
    argv = [receiver_path(), "--root", os.path.realpath(s.root)]
    if s.convert:
        argv += ["--convert"]
        if s.convert_engine != ConvertEngine.VIRT_V2V.value:
            argv += ["--convert-engine", s.convert_engine]
        if s.network != ConvertNetwork.DHCP.value:
            argv += ["--network", s.network]
        if s.max_conversions:
            argv += ["--max-conversions", str(s.max_conversions)]
    if s.bwlimit:
        argv += ["--bwlimit", s.bwlimit]
    cmd = " ".join(shlex.quote(a) for a in argv)
    if '"' in cmd or "\\" in cmd:
        raise UsageError(f"the forced command {cmd!r} would hold a quote or a backslash: use plain paths")
    return cmd


def default_address() -> str:
    """This machine's first global IPv4 address (what a source on its network reaches)."""
    res = run(["ip", "-4", "-o", "addr", "show", "scope", "global"], check=False, quiet=True)
    for line in res.stdout.splitlines():
        words = line.split()
        if "inet" in words:
            return words[words.index("inet") + 1].split("/")[0]
    return socket.getfqdn()


def host_key_pin(path: str) -> str:
    if not os.path.exists(path):
        raise UsageError(f"sshd host key {path} does not exist: is openssh-server installed? (or give "
                         f"--host-key FILE, the .pub of the key sshd presents)")
    words = run(["ssh-keygen", "-l", "-E", "sha256", "-f", path]).stdout.split()
    if len(words) < 2 or not words[1].startswith("SHA256:"):
        raise UsageError(f"{path}: ssh-keygen gives no SHA256 fingerprint ({' '.join(words)})")
    return words[1]


# ------------------------------------------------------------------ the steps

def _user(s: Setup) -> pwd.struct_passwd:
    try:
        pw = pwd.getpwnam(s.user)
        s.say(f"user {s.user}: unchanged (uid {pw.pw_uid}, home {pw.pw_dir})")
    except KeyError:
        run(["useradd", "--system", "--create-home", "--shell", "/bin/sh", "--comment",
             "coldclone conversion server", s.user])
        # '*': no password can log in, but the account is not locked ('!'), which sshd refuses
        # outright without PAM
        run(["usermod", "-p", "*", s.user])
        pw = pwd.getpwnam(s.user)
        s.say(f"user {s.user}: created (uid {pw.pw_uid}, home {pw.pw_dir}, key logins only)")
    if not pw.pw_dir or not os.path.isdir(pw.pw_dir):
        raise UsageError(f"user {s.user} has no home directory ({pw.pw_dir!r}) for its authorized_keys; "
                         f"give it one (usermod -d DIR -m {s.user}) or choose another --user")
    return pw


def _root(s: Setup, pw: pwd.struct_passwd) -> None:
    root = os.path.realpath(s.root)
    made = not os.path.isdir(root)
    os.makedirs(root, mode=0o750, exist_ok=True)
    st = os.stat(root)
    if (st.st_uid, stat.S_IMODE(st.st_mode) & 0o700) != (pw.pw_uid, 0o700):
        os.chown(root, pw.pw_uid, pw.pw_gid)
        os.chmod(root, 0o750)
        s.say(f"root {root}: {'created' if made else 'given'} to {s.user}")
    else:
        s.say(f"root {root}: unchanged (owned by {s.user})")
    if not _can(s.user, "-w", root):
        raise UsageError(f"{s.user} cannot write into {root} although it owns it: a directory on the way "
                         f"is closed to it (chmod o+x the parents of {root}, or choose another --root)")


def _key(s: Setup) -> str:
    """The agents' key pair; its public half."""
    os.makedirs(s.key_dir, mode=0o700, exist_ok=True)
    os.chmod(s.key_dir, 0o700)
    have = os.path.exists(s.key_path)
    if s.identity:
        if s.rotate_key:
            raise UsageError("--identity takes an existing key and --rotate-key makes a new one: give one")
        try:
            data = open(s.identity, "rb").read()
        except OSError as e:
            raise UsageError(f"--identity {s.identity}: {e.strerror}") from None
        if b"PRIVATE KEY" not in data:
            raise UsageError(f"--identity {s.identity} is not a private key (the identity= another server printed)")
        changed = os.path.realpath(s.identity) != os.path.realpath(s.key_path) and \
            _write_if_changed(s.key_path, data, 0o600)
        s.say(f"agent key {s.key_path}: {'taken from ' + s.identity if changed else 'unchanged'}")
    elif not have or s.rotate_key:
        if have:
            os.unlink(s.key_path)
            if os.path.exists(s.key_path + ".pub"):
                os.unlink(s.key_path + ".pub")
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", KEY_COMMENT, "-f", s.key_path])
        s.say(f"agent key {s.key_path}: {'replaced (--rotate-key)' if have else 'created'}")
    else:
        s.say(f"agent key {s.key_path}: unchanged")
    pub = run(["ssh-keygen", "-y", "-f", s.key_path]).stdout.split()
    if len(pub) < 2:
        raise UsageError(f"{s.key_path}: ssh-keygen -y gives no public key")
    public = f"{pub[0]} {pub[1]} {KEY_COMMENT}"
    _write_if_changed(s.key_path + ".pub", (public + "\n").encode(), 0o644)
    return public


def _authorized_keys(s: Setup, pw: pwd.struct_passwd, public: str) -> str:
    ssh_dir = os.path.join(pw.pw_dir, ".ssh")
    if not os.path.isdir(ssh_dir):
        os.makedirs(ssh_dir, mode=0o700)
    os.chown(ssh_dir, pw.pw_uid, pw.pw_gid)
    os.chmod(ssh_dir, 0o700)
    path = os.path.join(ssh_dir, "authorized_keys")
    command = forced_command(s)
    ours = f'command="{command}",restrict {public}'
    try:
        old = open(path).read().splitlines()
    except FileNotFoundError:
        old = []
    # our lines end with the key comment; everything else in the file is the admin's own
    kept = [line for line in old if not line.rstrip().endswith(" " + KEY_COMMENT)]
    new = "\n".join(kept + [ours]) + "\n"
    changed = _write_if_changed(path, new.encode(), 0o600, pw.pw_uid, pw.pw_gid)
    s.say(f"{path}: {'written' if changed else 'unchanged'} (forced command: {command}, restrict)")
    if not _can(s.user, "-x", receiver_path()):
        raise UsageError(f"{s.user} cannot run {receiver_path()} (a directory on the way is closed to "
                         f"it): install coldclone where every user can run it (pip install "
                         f"'coldclone[server]' system-wide)")
    return path


def cmdline(s: Setup, pin: str, baked: bool) -> str:
    addr = s.address or default_address()
    host, _, port = addr.rpartition(":") if addr.count(":") == 1 else (addr, "", "")
    host = host or addr
    where = f"{host}:{port}" if port and port != "22" else host
    words = [f"coldclone.server=ssh://{s.user}@{where}/"]
    if not baked:
        words += [f"coldclone.hostkey={pin}", f"coldclone.identity={s.key_path}"]
    return " ".join(words)


def find_livecd(given: str | None) -> str:
    here = given or os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))))), "livecd")
    build = os.path.join(here, "build.sh")
    if not os.path.isfile(build):
        raise UsageError(f"--iso needs the coldclone source tree's livecd/build.sh ({build} is not there); "
                         f"give --livecd DIR of a checkout")
    return build


def build_iso(s: Setup, pin: str) -> str:
    build = find_livecd(s.livecd)
    out_dir = os.environ.get("COLDCLONE_BUILD") or os.path.join(os.path.dirname(build), "build")
    s.say(f"building the live ISO with the agents' key and the pin baked in ({build}; a few minutes)")
    log = os.path.join(s.key_dir, "iso-build.log")
    try:
        run([build], env={**os.environ, "IDENTITY": s.key_path, "HOSTKEY": pin}, timeout=3 * 3600,
            output_file=log)
    except CommandError as e:
        raise ColdcloneError(f"the ISO build failed ({e}); its log: {log}") from None
    return os.path.join(out_dir, "coldclone.iso")


def init(s: Setup) -> dict[str, str]:
    """Every step, in order; the printed values (identity, hostkey, cmdline, iso)."""
    if os.geteuid() != 0:
        raise UsageError("coldclone-server init sets up a user, sshd's keys and a root: run it as root")
    if s.bwlimit:
        parse_rate(s.bwlimit, "--bwlimit")
    if s.max_conversions is not None and (s.max_conversions < 1 or not s.convert):
        raise UsageError("--max-conversions N: N of at least 1, with --convert")
    pw = _user(s)
    _root(s, pw)
    public = _key(s)
    _authorized_keys(s, pw, public)
    pin = host_key_pin(s.host_key)
    out = {"identity": s.key_path, "hostkey": pin}
    if s.iso:
        out["iso"] = build_iso(s, pin)
    out["cmdline"] = cmdline(s, pin, baked=s.iso)
    return out
