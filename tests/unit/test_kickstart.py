"""kickstart/: the RHEL-family live ISO must pass pykickstart's validation and stay in step
with the Debian live image (same units and scripts, same packages, same kernel command line).

Validation is what ksvalidator does (parser with the release's version handler, parse
warnings and deprecated commands are errors), but on the files in place, so that the
distribution files' relative ``%include coldclone-live.ks`` resolves.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import warnings

import pytest

pykickstart = pytest.importorskip("pykickstart")
from pykickstart.errors import KickstartError, KickstartParseWarning  # noqa: E402
from pykickstart.parser import KickstartParser  # noqa: E402
from pykickstart.version import makeVersion  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KS_DIR = os.path.join(REPO, "kickstart")
COMMON = os.path.join(KS_DIR, "coldclone-live.ks")
ROOTFS_UNITS = os.path.join(REPO, "livecd", "rootfs", "etc", "systemd", "system")
BUILD_SH = os.path.join(REPO, "livecd", "build.sh")
PACKAGES_LIST = os.path.join(REPO, "livecd", "config", "packages.list")

# file -> the pykickstart syntax version it is written for
DISTRO_FILES = {
    "coldclone-live.ks": "RHEL9",
    "rhel9.ks": "RHEL9",
    "centos-stream9.ks": "RHEL9",
    "fedora.ks": "F40",
}

# Debian package of livecd/config/packages.list -> the RHEL/Fedora package(s) doing its job.
# A package added to the Debian image without an entry here fails test_packages_match_debian.
DEBIAN_TO_RPM = {
    "linux-image-amd64": ["kernel", "kernel-modules"],
    "live-boot": ["dracut-live"],
    "live-boot-initramfs-tools": ["dracut-config-generic"],
    "systemd-sysv": ["systemd"],
    "ifupdown": ["NetworkManager"],
    "isc-dhcp-client": ["dhcp-client"],     # dhclient itself: netsetup and iscsi_ip=dhcp run it
    "udev": ["systemd-udev"],
    "kmod": ["kmod"],
    "zstd": ["zstd"],
    "dbus": ["dbus-broker"],
    "iproute2": ["iproute"],
    "iputils-ping": ["iputils"],
    "procps": ["procps-ng"],
    "less": ["less"],
    "open-iscsi": ["iscsi-initiator-utils"],
    "mdadm": ["mdadm"],
    "lvm2": ["lvm2"],
    "parted": ["parted"],
    "e2fsprogs": ["e2fsprogs"],
    "xfsprogs": ["xfsprogs"],
    "ntfs-3g": ["ntfs-3g"],
    "dosfstools": ["dosfstools"],
    "partclone": ["partclone"],
    "nfs-common": ["nfs-utils"],
    "pciutils": ["pciutils"],
    "ethtool": ["ethtool"],
    "openssh-client": ["openssh-clients"],
    "ca-certificates": ["ca-certificates"],
    "python3": ["python3.11"],
    "qemu-utils": ["qemu-img"],
    "python3-libnbd": ["python3-libnbd"],
}


def parse(name: str):
    """Parse like ksvalidator: errors and (deprecation) warnings fail; %include followed."""
    handler = makeVersion(DISTRO_FILES[name])
    parser = KickstartParser(handler, followIncludes=True, errorsAreFatal=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            parser.readKickstart(os.path.join(KS_DIR, name))
        except KickstartError as e:
            pytest.fail(f"kickstart/{name} does not validate as {DISTRO_FILES[name]}: {e}")
    problems = [str(w.message) for w in caught if issubclass(w.category, KickstartParseWarning)]
    assert not problems, f"kickstart/{name}: pykickstart warnings (ksvalidator treats them as errors): {problems}"
    assert parser.errorsCount == 0, f"kickstart/{name}: {parser.errorsCount} parse errors"
    return handler


def ks_text() -> str:
    with open(COMMON) as f:
        return f.read()


def post_scripts(handler, chroot: bool) -> list[str]:
    return [s.script for s in handler.scripts
            if s.type == pykickstart.constants.KS_SCRIPT_POST and s.inChroot == chroot]


def build_sh_var(name: str) -> str:
    with open(BUILD_SH) as f:
        m = re.search(rf'^{name}="([^"]*)"', f.read(), re.M)
    assert m, f"livecd/build.sh has no {name}= line any more; update this test"
    return m.group(1)


@pytest.mark.parametrize("name", sorted(DISTRO_FILES))
def test_kickstart_validates(name):
    h = parse(name)
    assert h.packages.packageList, f"{name}: no %packages"
    # the common file's header must be the last %packages header seen (its options win)
    assert h.packages.excludeDocs, f"{name}: --excludedocs lost (a later %packages header reset it)"
    assert post_scripts(h, chroot=False) and post_scripts(h, chroot=True)


@pytest.mark.parametrize("name", ["rhel9.ks", "centos-stream9.ks", "fedora.ks"])
def test_distribution_files_name_an_installation_source(name):
    h = parse(name)
    assert h.url.url or h.url.mirrorlist or h.url.metalink, f"{name}: no url command"


def test_ksvalidator_accepts_the_common_file():
    """The packaged ksvalidator itself (the tool docs/kickstart.md tells people to run)."""
    exe = os.path.join(os.path.dirname(os.path.realpath(pykickstart.__file__)), "..", "..", "..", "..", "bin", "ksvalidator")
    exe = os.path.normpath(exe)
    if not os.path.exists(exe):
        pytest.skip("ksvalidator script not installed next to pykickstart")
    for name, version in DISTRO_FILES.items():
        r = subprocess.run([exe, "-i", "-v", version, name], cwd=KS_DIR, capture_output=True, text=True)
        assert r.returncode == 0, f"ksvalidator -v {version} {name}:\n{r.stdout}{r.stderr}"


def test_every_unit_named_exists_in_livecd_rootfs():
    units = set(re.findall(r"\b(coldclone-[\w@.-]*?\.(?:service|timer|target|socket))\b", ks_text()))
    assert units, "the kickstart enables no coldclone unit"
    missing = sorted(u for u in units if not os.path.exists(os.path.join(ROOTFS_UNITS, u)))
    assert not missing, f"units named in kickstart/coldclone-live.ks but not in livecd/rootfs: {missing}"


def test_same_units_enabled_as_the_debian_image():
    with open(BUILD_SH) as f:
        deb = re.search(r"systemctl enable -q ([^\n]+)", f.read())
    assert deb, "livecd/build.sh no longer enables units with `systemctl enable -q`; update this test"
    ks = re.search(r"^systemctl enable ([^\n]+)", "\n".join(post_scripts(parse("coldclone-live.ks"), True)), re.M)
    assert ks, "kickstart %post enables no units"
    assert sorted(ks.group(1).split()) == sorted(deb.group(1).split())


def test_units_and_scripts_are_copied_not_forked():
    """livecd/rootfs/ is copied in whole by %post --nochroot; no unit text is re-typed here."""
    text = ks_text()
    for marker in ("[Unit]", "[Service]", "ExecStart=", "ConditionKernelCommandLine"):
        assert marker not in text, f"kickstart inlines unit content ({marker}): copy it from livecd/rootfs instead"
    nochroot = "\n".join(post_scripts(parse("coldclone-live.ks"), False))
    assert 'cp -a --no-preserve=ownership "$STAGE/rootfs/." "$ROOT/"' in nochroot
    with open(os.path.join(KS_DIR, "stage.sh")) as f:
        stage = f.read()
    assert 'cp -a "$REPO/livecd/rootfs" "$STAGE/rootfs"' in stage
    # what the kickstart requires from the stage is what stage.sh produces
    for need in re.search(r"for f in ([^;]+); do", nochroot).group(1).split():
        assert f"$STAGE/{need}" in stage, f"the kickstart needs $STAGE/{need}, which stage.sh does not make"


def test_stage_script_is_valid_bash():
    subprocess.run(["bash", "-n", os.path.join(KS_DIR, "stage.sh")], check=True)


def test_agent_venv_uses_the_pinned_lock_offline():
    chroot = "\n".join(post_scripts(parse("coldclone-live.ks"), True))
    assert "--no-index" in chroot and "-r /tmp/coldclone-ks/requirements.lock" in chroot
    assert "venv --without-pip /opt/coldclone" in chroot


def test_kernel_command_line_matches_the_debian_image():
    h = parse("coldclone-live.ks")
    deb = build_sh_var("CMDLINE").split()
    consoles = [w for w in deb if w.startswith("console=")]
    assert consoles == ["console=tty0", "console=ttyS0,115200"]
    ks = shlex.split(h.bootloader.appendLine)
    assert [w for w in ks if w.startswith("console=")] == consoles, h.bootloader.appendLine
    # dracut must not assemble md / activate LVM on the source disks (live-boot never does)
    for w in ("rd.md=0", "rd.lvm=0", "rd.dm=0", "rd.luks=0"):
        assert w in ks
    with open(os.path.join(REPO, "docs", "kickstart.md")) as f:
        doc = f.read()
    assert '--extra-boot-args "' + h.bootloader.appendLine + '"' in doc, \
        "docs/kickstart.md's livemedia-creator command must pass the same --extra-boot-args"


def test_packages_match_debian():
    with open(PACKAGES_LIST) as f:
        debian = [l.split("#")[0].strip() for l in f]
    debian = [p for p in debian if p]
    unmapped = [p for p in debian if p not in DEBIAN_TO_RPM]
    assert not unmapped, f"livecd/config/packages.list has packages without a kickstart equivalent: {unmapped}"
    for name in ("rhel9.ks", "centos-stream9.ks", "fedora.ks"):
        pkgs = set(parse(name).packages.packageList)
        missing = sorted({r for p in debian for r in DEBIAN_TO_RPM[p]} - pkgs)
        assert not missing, f"{name}: %packages lacks {missing}"
    excluded = parse("coldclone-live.ks").packages.excludedList
    assert "dracut-config-rescue" in excluded
