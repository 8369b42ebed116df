"""The source OS's software iSCSI identity: /etc/iscsi/initiatorname.iscsi and
iscsid.conf. The agent logs in with this identity so the array's ACLs let it
in; the CHAP secrets are kept but never shown."""

from __future__ import annotations

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
