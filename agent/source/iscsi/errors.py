"""Why an iSCSI login with the source's identity failed, in words an operator can act on.

Each failure is its own class so front ends (and tests) can tell them apart.
They are source errors (exit 4): without the LUNs the source cannot be captured.

What the real tools return (open-iscsi 2.1.8 in the live ISO against tgtd 1.0.85,
measured by tests/vm/test_iscsi.py and tests/integration/test_tgt.py; docs/iscsi.md):
  - wrong CHAP secret: login status 0x0201; SendTargets still lists the target;
    `iscsiadm --login` exits 24 "iSCSI login failed due to authorization failure";
    iscsid logs "Initiator failed authentication with target".
  - ACL refusal: tgtd leaves the target out of the SendTargets answer (exit 21
    "No portals found") and answers the login with 0x0203 "target not found"
    (arrays may send 0x0202 forbidden); `iscsiadm --login` exits 19 "encountered
    non-retryable iSCSI login failure"; iscsid logs "login rejected: initiator
    error - target not found (02/03)".
  - unreachable portal: discovery exits 11 "iSCSI PDU timed out" after "cannot make
    connection to ...: Connection refused" (4 / 8 for other transport failures).
"""

from __future__ import annotations

from ...errors import SourceError

# iscsiadm exit codes (open-iscsi include/iscsi_err.h)
ERR_TRANS = 4
ERR_LOGIN = 5
ERR_TRANS_TIMEOUT = 8
ERR_PDU_TIMEOUT = 11
ERR_TRANS_NOT_FOUND = 12
ERR_ACCESS = 13
ERR_SESS_EXISTS = 15
ERR_FATAL_LOGIN = 19
ERR_ISCSID_NOTCONN = 20
ERR_NO_OBJS_FOUND = 21
ERR_LOGIN_AUTH_FAILED = 24


class IscsiError(SourceError):
    """An iSCSI step failed; the message names the target/portal and what to check."""

    def __init__(self, message: str, *, target: str | None = None, portal: str | None = None,
                 detail: str = ""):
        self.target = target
        self.portal = portal
        self.detail = detail
        super().__init__(message)


class IscsiAuthError(IscsiError):
    """The target rejected our CHAP credentials (or we rejected its, with mutual CHAP)."""


class IscsiAclError(IscsiError):
    """The target does not admit this initiator name (or address)."""


class IscsiUnreachableError(IscsiError):
    """Nothing answers at the portal."""


class IscsiNoLunsError(IscsiError):
    """Logged in, but no LUN block device appeared."""


def auth_error(target: str, portal: str, initiator: str, user: str | None, detail: str = "",
               mutual: bool = False, discovery: bool = False) -> IscsiAuthError:
    what = "SendTargets discovery at" if discovery else f"login to {target} at"
    hint = (f"Check the CHAP user ({user or 'none set'}) and secret for initiator {initiator}: "
            f"the source's {'discovery.sendtargets' if discovery else 'node.session'}.auth.* "
            f"settings (/etc/iscsi/iscsid.conf or the node record) no longer match the array's")
    if mutual:
        hint += "; with mutual CHAP also check the target's own user/secret (password_in)"
    return IscsiAuthError(f"iSCSI {what} {portal}: CHAP authentication failed. {hint}.",
                          target=target, portal=portal, detail=detail)


def acl_error(target: str, portal: str, initiator: str, detail: str = "",
              address: str | None = None) -> IscsiAclError:
    via = f" from address {address}" if address else ""
    return IscsiAclError(
        f"iSCSI target {target} at {portal} refuses initiator {initiator}{via} (access "
        f"control list). Check that this is the source server's own initiator name (from its "
        f"/etc/iscsi/initiatorname.iscsi) and that the array's ACL / host group for the LUNs "
        f"still lists it (and, if the ACL is by IP, coldclone.iscsi_ip=original).",
        target=target, portal=portal, detail=detail)


def unreachable_error(target: str | None, portal: str, detail: str = "",
                      local: str | None = None) -> IscsiUnreachableError:
    what = f"target {target} at portal {portal}" if target else f"portal {portal}"
    src = f" (our address: {local})" if local else ""
    return IscsiUnreachableError(
        f"iSCSI {what} is unreachable{src}. Check the cabling / VLAN of the storage NIC, "
        f"that the live system has an address on the storage network (coldclone.iscsi_ip=), "
        f"and that the array is up.",
        target=target, portal=portal, detail=detail)
