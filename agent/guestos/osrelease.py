"""Which OS is installed: /etc/os-release, else the older release files."""

from __future__ import annotations

import re
import shlex

from . import files
from .model import OsInfo

REDHAT_IDS = {"rhel", "centos", "fedora", "rocky", "almalinux", "ol", "scientific", "amzn"}
DEBIAN_IDS = {"debian", "ubuntu", "linuxmint", "raspbian"}


def parse_os_release(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        try:
            parts = shlex.split(value, posix=True)
            value = parts[0] if parts else ""
        except ValueError:     # an unbalanced quote: keep the raw text
            value = value.strip().strip("\"'")
        out[key.strip()] = value
    return out


def family_of(os_id: str | None, id_like: str = "") -> str:
    ids = {os_id or ""} | set(id_like.split())
    if ids & REDHAT_IDS or "rhel" in id_like:
        return "redhat"
    if ids & DEBIAN_IDS:
        return "debian"
    if any("suse" in i for i in ids):
        return "suse"
    return "unknown"


def parse_redhat_release(text: str) -> OsInfo:
    """'Red Hat Enterprise Linux Server release 6.10 (Santiago)' and friends."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    m = re.search(r"release\s+([\d.]+)", line)
    low = line.lower()
    if "red hat" in low:
        os_id = "rhel"
    elif "centos" in low:
        os_id = "centos"
    elif "scientific" in low:
        os_id = "scientific"
    elif "oracle" in low:
        os_id = "ol"
    elif "fedora" in low:
        os_id = "fedora"
    else:
        os_id = None
    name = line.split(" release")[0].strip() or None
    return OsInfo(id=os_id, version_id=m.group(1) if m else None, name=name,
                  pretty_name=line or None, family="redhat", source="/etc/redhat-release")


def read_os(root: str) -> OsInfo:
    for rel in ("etc/os-release", "usr/lib/os-release"):
        text = files.read_text(root, rel)
        if text:
            v = parse_os_release(text)
            return OsInfo(id=v.get("ID"), version_id=v.get("VERSION_ID"), name=v.get("NAME"),
                          pretty_name=v.get("PRETTY_NAME"),
                          family=family_of(v.get("ID"), v.get("ID_LIKE", "")),
                          source="/" + rel)
    for rel in ("etc/redhat-release", "etc/centos-release", "etc/oracle-release"):
        text = files.read_text(root, rel)
        if text:
            info = parse_redhat_release(text)
            info.source = "/" + rel
            return info
    text = files.read_text(root, "etc/debian_version")
    if text:
        return OsInfo(id="debian", version_id=text.strip(), name="Debian GNU/Linux",
                      pretty_name=f"Debian GNU/Linux {text.strip()}", family="debian",
                      source="/etc/debian_version")
    text = files.read_text(root, "etc/SuSE-release")
    if text:
        m = re.search(r"VERSION\s*=\s*(\S+)", text)
        return OsInfo(id="sles", version_id=m.group(1) if m else None,
                      name=text.splitlines()[0].strip(), pretty_name=text.splitlines()[0].strip(),
                      family="suse", source="/etc/SuSE-release")
    return OsInfo(family="unknown")
