"""The source OS's software iSCSI identity: /etc/iscsi/initiatorname.iscsi and
iscsid.conf. The agent logs in with this identity so the array's ACLs let it
in; the CHAP secrets are kept but never shown."""

from __future__ import annotations

import os
import re

from . import files
from .model import IscsidConf, IscsiInitiator, Secret

# iscsid.conf keys whose values are secrets (node.session.auth.password,
# discovery.sendtargets.auth.password_in, ...).
SECRET_KEY = re.compile(r"(^|\.)password(_in)?$")


def key_values(text: str):
    """(key, value) of each `key = value` line; comments and blank lines skipped."""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if sep:
            yield key.strip(), value.strip()


def parse_initiatorname(text: str) -> IscsiInitiator:
    out = IscsiInitiator()
    for key, value in key_values(text):
        if key == "InitiatorName":
            out.name = value
        elif key == "InitiatorAlias":
            out.alias = value
    return out


def parse_iscsid_conf(text: str) -> IscsidConf:
    conf = IscsidConf()
    for key, value in key_values(text):
        if SECRET_KEY.search(key):
            conf.secrets[key] = Secret(value)
        else:
            conf.settings[key] = value
    return conf


def read_initiator(root: str) -> IscsiInitiator | None:
    text = files.read_text(root, "etc/iscsi/initiatorname.iscsi")
    return parse_initiatorname(text) if text is not None else None


def read_iscsid(root: str) -> IscsidConf | None:
    text = files.read_text(root, "etc/iscsi/iscsid.conf")
    return parse_iscsid_conf(text) if text is not None else None


# --- node and discovery records (open-iscsi's database) -------------------------
# Two layouts exist on disk, both under /var/lib/iscsi (Debian, RHEL >= 6) or
# /etc/iscsi (RHEL 5, SLES):
#   nodes/<target iqn>/<address>,<port>,<tpgt>/<iface name>   (a file per iface)
#   nodes/<target iqn>/<address>,<port>[,<tpgt>]              (the file itself; older)
# The record's own keys (node.conn[0].address ...) win over the path.

NODE_DIRS = ("var/lib/iscsi/nodes", "etc/iscsi/nodes")
SENDTARGETS_DIRS = ("var/lib/iscsi/send_targets", "etc/iscsi/send_targets")


def parse_record(text: str) -> IscsidConf:
    """A node or discovery record: the same `key = value` format as iscsid.conf."""
    return parse_iscsid_conf(text)


def split_portal_name(name: str) -> tuple[str, int | None, int | None]:
    """`192.168.10.20,3260,1` / `[fe80::1],3260,1` / `fe80::1,3260` -> (address, port, tpgt)."""
    parts = name.split(",")
    address, rest = parts[0], parts[1:]
    nums = []
    for p in rest:
        try:
            nums.append(int(p))
        except ValueError:
            nums.append(None)
    port = nums[0] if nums else None
    tpgt = nums[1] if len(nums) > 1 else None
    return address.strip("[]"), port, tpgt


def read_node_records(root: str) -> list[tuple[str, str, str | None, IscsidConf]]:
    """(path, portal dir name, iface name or None for the old layout, record) of each node."""
    out = []
    for rel in NODE_DIRS:
        for target in files.listdir(root, rel):
            for portal in files.listdir(root, f"{rel}/{target}"):
                prel = f"{rel}/{target}/{portal}"
                path = files.resolve(root, prel)
                if path is None:
                    continue
                if os.path.isdir(path):
                    for iface in files.listdir(root, prel):
                        text = files.read_text(root, f"{prel}/{iface}")
                        if text is not None:
                            out.append((f"/{prel}/{iface}", portal, iface, parse_record(text)))
                else:
                    text = files.read_text(root, prel)
                    if text is not None:
                        out.append((f"/{prel}", portal, None, parse_record(text)))
    return out


def read_sendtargets_records(root: str) -> list[tuple[str, IscsidConf]]:
    """(path, record) of each sendtargets discovery record (st_config)."""
    out = []
    for rel in SENDTARGETS_DIRS:
        for portal in files.listdir(root, rel):
            prel = f"{rel}/{portal}"
            path = files.resolve(root, prel)
            if path is None:
                continue
            rec_rel = f"{prel}/st_config" if os.path.isdir(path) else prel
            text = files.read_text(root, rec_rel)
            if text is None:
                continue
            rec = parse_record(text)
            if "discovery.sendtargets.address" not in rec.settings:
                # Older records hold only settings; the directory name is the portal.
                address, port, _ = split_portal_name(portal)
                rec.settings["discovery.sendtargets.address"] = address
                rec.settings["discovery.sendtargets.port"] = str(port or 3260)
            out.append((f"/{rec_rel}", rec))
    return out
